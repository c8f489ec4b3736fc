//! Read routing against real clusters: reads to the followers, writes and read-write transactions
//! to the leader, hints and pins, a follower leaving and rejoining the rotation, a hand-made
//! failover, and a cluster without followers.
//!
//! Which server answered is read from the server itself (`inet_server_port()`, compared with the
//! cluster's ports), never from the proxy's own reports.

mod support;
use support::*;

use pgcausal::cluster::StopMode;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio_postgres::{Client, NoTls};

/// No single statement of these tests should take this long; a hang fails instead of blocking.
const QUERY_TIMEOUT: Duration = Duration::from_secs(20);

/// The tests of this binary run one at a time: some stop, kill and promote nodes of a cluster of
/// their own, and their time limits (1 s, 5 s) should not compete with other tests for 2 cores.
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

async fn connect(p: &ProxyProcess, db: &str) -> Client {
    try_connect(&p.conn_str(db)).await.unwrap_or_else(|e| panic!("through the proxy: {e}\n{}", p.log()))
}

/// All rows of a simple-protocol query, as text.
async fn try_rows(c: &Client, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
    let messages = tokio::time::timeout(QUERY_TIMEOUT, c.simple_query(sql))
        .await
        .map_err(|_| format!("{sql}: no answer within {QUERY_TIMEOUT:?}"))?
        .map_err(|e| format!("{sql}: {}", pg_error(&e)))?;
    Ok(simple_query_rows(&messages))
}

/// The first row of a simple-protocol query; panics on an error or no row.
async fn row(c: &Client, sql: &str) -> Vec<Option<String>> {
    let rows = try_rows(c, sql).await.unwrap_or_else(|e| panic!("{e}"));
    rows.into_iter().next().unwrap_or_else(|| panic!("{sql}: no row"))
}

async fn exec(c: &Client, sql: &str) {
    tokio::time::timeout(QUERY_TIMEOUT, c.batch_execute(sql))
        .await
        .unwrap_or_else(|_| panic!("{sql}: no answer within {QUERY_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("{sql}: {}", pg_error(&e)));
}

fn parse_port(sql: &str, text: Option<&str>) -> Result<u16, String> {
    text.and_then(|t| t.trim().parse().ok()).ok_or_else(|| format!("{sql}: not a port: {text:?}"))
}

/// The port in the first column of the first row, simple protocol.
async fn try_simple_port(c: &Client, sql: &str) -> Result<u16, String> {
    let rows = try_rows(c, sql).await?;
    let first = rows.first().ok_or_else(|| format!("{sql}: no row"))?;
    parse_port(sql, first.first().and_then(|v| v.as_deref()))
}

async fn simple_port(c: &Client, sql: &str) -> u16 {
    try_simple_port(c, sql).await.unwrap_or_else(|e| panic!("{e}"))
}

/// The port (int4) in the first column of the first row, extended protocol.
async fn try_ext_port(
    c: &Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<u16, String> {
    let row = tokio::time::timeout(QUERY_TIMEOUT, c.query_one(sql, params))
        .await
        .map_err(|_| format!("{sql}: no answer within {QUERY_TIMEOUT:?}"))?
        .map_err(|e| format!("{sql}: {}", pg_error(&e)))?;
    Ok(row.try_get::<_, i32>(0).map_err(|e| format!("{sql}: {e}"))? as u16)
}

/// Like [`try_ext_port`] on a client or a transaction; panics on an error.
async fn ext_port(c: &impl tokio_postgres::GenericClient, sql: &str) -> u16 {
    let row = tokio::time::timeout(QUERY_TIMEOUT, c.query_one(sql, &[]))
        .await
        .unwrap_or_else(|_| panic!("{sql}: no answer within {QUERY_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("{sql}: {}", pg_error(&e)));
    row.get::<_, i32>(0) as u16
}

/// "node1:54321" for a port of the cluster.
fn name(cluster: &TestCluster, port: u16) -> String {
    match cluster.ports.iter().position(|&p| p == port) {
        Some(i) => format!("node{i}:{port}"),
        None => format!("unknown:{port}"),
    }
}

fn tally(cluster: &TestCluster, ports: &[u16]) -> BTreeMap<String, usize> {
    let mut t = BTreeMap::new();
    for &p in ports {
        *t.entry(name(cluster, p)).or_default() += 1;
    }
    t
}

fn leader_port(cluster: &TestCluster) -> u16 {
    cluster.ports[0]
}

fn follower_ports(cluster: &TestCluster) -> Vec<u16> {
    cluster.ports[1..].to_vec()
}

/// Routing on its own, at the eventual level: at the default causal level a session stays on the
/// follower of its last read while switching would need a fresh position sample, and may wait for
/// (or fall back from) followers behind its floor; tests/consistency.rs covers that level.
fn routing_options() -> ProxyOptions {
    ProxyOptions { extra: "[consistency]\nlevel = \"eventual\"\n".into(), ..Default::default() }
}

/// Failed checks of a test that goes on after a failure, to report everything it saw at once.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn check(&mut self, ok: bool, problem: impl FnOnce() -> String) {
        if !ok {
            let problem = problem();
            eprintln!("check failed: {problem}");
            self.0.push(problem);
        }
    }

    fn add(&mut self, problem: Option<String>) {
        self.check(problem.is_none(), || problem.unwrap_or_default());
    }

    fn finish(self) {
        assert!(self.0.is_empty(), "{} check(s) failed:\n- {}", self.0.len(), self.0.join("\n- "));
    }
}

/// Unless every read ran on a follower, none on the leader, and each follower answered at least
/// 10% of them: what went wrong.
fn spread_problem(cluster: &TestCluster, what: &str, ports: &[u16]) -> Option<String> {
    let t = tally(cluster, ports);
    let followers = follower_ports(cluster);
    if !ports.iter().all(|p| followers.contains(p)) {
        return Some(format!(
            "{what}: reads must all run on followers {followers:?} (leader {}), seen {t:?}",
            leader_port(cluster)
        ));
    }
    for f in &followers {
        let n = ports.iter().filter(|p| *p == f).count();
        if n * 10 < ports.len() {
            return Some(format!(
                "{what}: follower {} got {n} of {} reads (< 10%), seen {t:?}",
                name(cluster, *f),
                ports.len()
            ));
        }
    }
    None
}

fn assert_all_on(cluster: &TestCluster, what: &str, ports: &[u16], expected: u16) {
    assert!(
        !ports.is_empty() && ports.iter().all(|&p| p == expected),
        "{what}: expected every answer from {}, seen {:?}",
        name(cluster, expected),
        tally(cluster, ports)
    );
}

fn assert_all_on_followers(cluster: &TestCluster, what: &str, ports: &[u16]) {
    let followers = follower_ports(cluster);
    assert!(
        !ports.is_empty() && ports.iter().all(|p| followers.contains(p)),
        "{what}: expected every answer from a follower {followers:?}, seen {:?}",
        tally(cluster, ports)
    );
}

/// The proxy has just started; the monitors may not have probed the followers yet. Reads (which
/// may land on the leader meanwhile) until every follower has answered once, or 15 s.
async fn warm_up(cluster: &TestCluster, c: &Client) {
    let followers = follower_ports(cluster);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let port = simple_port(c, "SELECT inet_server_port()").await;
        seen.push(port);
        if followers.iter().all(|f| seen.contains(f)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("warm-up: not every follower answered within 15 s: {:?}", tally(cluster, &seen));
}

/// `pgcausal_queries_total` per node label, summed over any other labels.
fn queries_by_node(metrics: &str) -> BTreeMap<String, f64> {
    let mut by_node = BTreeMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("pgcausal_queries_total{") else { continue };
        let Some((labels, value)) = rest.split_once('}') else { continue };
        let Some(node) = labels.split(',').find_map(|kv| kv.trim().strip_prefix("node=\"")) else { continue };
        let Ok(value) = value.trim().parse::<f64>() else { continue };
        *by_node.entry(node.trim_end_matches('"').to_string()).or_default() += value;
    }
    by_node
}

/// Polls `done` every 20 ms until it holds or `timeout` passes; returns how long it took.
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

// ---------------------------------------------------------------------------------------------
// Reader tasks for the tests that stop nodes
// ---------------------------------------------------------------------------------------------

struct Read {
    started: Instant,
    reader: usize,
    outcome: Result<u16, String>,
}

type ReadLog = Arc<Mutex<Vec<Read>>>;

/// `n` clients reading `inet_server_port()` in a loop until `stop`: reader 0 mod 4 uses the simple
/// protocol, 1 a statement prepared once, 2 the simple protocol, 3 a fresh unnamed-style
/// `query` each time (Parse/Bind/Execute). A client whose connection breaks reconnects (the
/// break is logged as an error).
fn spawn_readers(
    rt: &tokio::runtime::Runtime,
    conn_str: String,
    n: usize,
    log: ReadLog,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|reader| {
            let (conn_str, log, stop) = (conn_str.clone(), log.clone(), stop.clone());
            rt.spawn(async move {
                let mut client: Option<(Client, tokio_postgres::Statement)> = None;
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    if client.as_ref().is_none_or(|(c, _)| c.is_closed()) {
                        let connected = match try_connect(&conn_str).await {
                            Ok(c) => match tokio::time::timeout(
                                QUERY_TIMEOUT,
                                c.prepare("SELECT inet_server_port() + 0 * $1::int4"),
                            )
                            .await
                            {
                                Ok(Ok(stmt)) => Ok((c, stmt)),
                                Ok(Err(e)) => Err(format!("prepare: {}", pg_error(&e))),
                                Err(_) => Err("prepare: no answer".to_string()),
                            },
                            Err(e) => Err(e),
                        };
                        match connected {
                            Ok(pair) => client = Some(pair),
                            Err(e) => {
                                log.lock().unwrap().push(Read { started, reader, outcome: Err(e) });
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                continue;
                            }
                        }
                    }
                    let (c, stmt) = client.as_ref().unwrap();
                    let started = Instant::now();
                    let outcome = match reader % 4 {
                        0 | 2 => try_simple_port(c, "SELECT inet_server_port()").await,
                        1 => match tokio::time::timeout(QUERY_TIMEOUT, c.query_one(stmt, &[&1i32])).await {
                            Ok(Ok(r)) => r.try_get::<_, i32>(0).map(|p| p as u16).map_err(|e| e.to_string()),
                            Ok(Err(e)) => Err(format!("prepared read: {}", pg_error(&e))),
                            Err(_) => Err("prepared read: no answer".to_string()),
                        },
                        _ => try_ext_port(c, "SELECT inet_server_port()", &[]).await,
                    };
                    log.lock().unwrap().push(Read { started, reader, outcome });
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect()
}

/// Counts of reads per node and the first errors, relative to `t0`, for assertion messages.
fn summary(cluster: &TestCluster, log: &ReadLog, t0: Instant) -> String {
    let log = log.lock().unwrap();
    let ok: Vec<u16> = log.iter().filter_map(|r| r.outcome.as_ref().ok().copied()).collect();
    let errors: Vec<String> = log
        .iter()
        .filter_map(|r| {
            r.outcome.as_ref().err().map(|e| {
                let at = r.started.checked_duration_since(t0).map_or("before".to_string(), |d| format!("{d:?}"));
                format!("reader {} at t0+{at}: {e}", r.reader)
            })
        })
        .collect();
    format!(
        "{} reads ok {:?}, {} errors; first errors: {:#?}",
        ok.len(),
        tally(cluster, &ok),
        errors.len(),
        &errors[..errors.len().min(10)]
    )
}

fn error_count(log: &ReadLog) -> usize {
    log.lock().unwrap().iter().filter(|r| r.outcome.is_err()).count()
}

/// Ports of the successful reads that started at or after `from` (and before `to`).
fn ports_between(log: &ReadLog, from: Instant, to: Option<Instant>) -> Vec<u16> {
    log.lock()
        .unwrap()
        .iter()
        .filter(|r| r.started >= from && to.is_none_or(|to| r.started < to))
        .filter_map(|r| r.outcome.as_ref().ok().copied())
        .collect()
}

fn stop_readers(rt: &tokio::runtime::Runtime, stop: &AtomicBool, readers: Vec<tokio::task::JoinHandle<()>>) {
    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for r in readers {
            let _ = tokio::time::timeout(Duration::from_secs(30), r).await;
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Tests on the shared cluster
// ---------------------------------------------------------------------------------------------

#[test]
fn reads_spread_over_both_followers_and_writes_go_to_the_leader() {
    let _serial = serial();
    let cluster = shared_cluster();
    let db = "routing_spread";
    cluster.create_database(db);
    // Created before the proxy starts, so the volatile-function catalog knows my_write_fn.
    cluster.sql(
        0,
        db,
        "CREATE TABLE t (id serial PRIMARY KEY, v int); INSERT INTO t (v) VALUES (0); CREATE SEQUENCE s; \
         CREATE FUNCTION my_write_fn(x int DEFAULT 1) RETURNS int LANGUAGE plpgsql VOLATILE \
         AS $$ BEGIN INSERT INTO t (v) VALUES (x); RETURN x; END $$",
    );
    cluster.cluster.lock().unwrap().wait_replicated(Duration::from_secs(30)).expect("replicated");
    let p = ProxyProcess::start(cluster, routing_options());
    let leader = leader_port(cluster);
    let rt = runtime();
    rt.block_on(async { warm_up(cluster, &connect(&p, db).await).await });
    let before = queries_by_node(&p.metrics());

    let mut problems = Problems::default();

    // Simple protocol: psql sends each line as its own Query on one connection, one after another.
    let out = ok(p.psql(db, &[], Some(&"SELECT inet_server_port();\n".repeat(200))));
    let simple: Vec<u16> =
        out.lines().map(|l| l.trim().parse().unwrap_or_else(|_| panic!("psql printed {l:?} in:\n{out}"))).collect();
    assert_eq!(simple.len(), 200, "psql output: {out}");
    problems.add(spread_problem(cluster, "200 sequential simple-protocol reads (psql)", &simple));

    let extended = rt.block_on(async {
        let c = connect(&p, db).await;
        // Extended protocol, a statement prepared once and executed 200 times (Bind/Execute/Sync).
        let stmt = c.prepare("SELECT inet_server_port(), $1::int4").await.expect("prepare");
        let mut prepared = Vec::new();
        for i in 0..200i32 {
            let r = c
                .query_one(&stmt, &[&i])
                .await
                .unwrap_or_else(|e| panic!("prepared extended read {i}: {}\n{}", pg_error(&e), p.log()));
            assert_eq!(r.get::<_, i32>(1), i, "prepared extended read {i}: wrong parameter echoed");
            prepared.push(r.get::<_, i32>(0) as u16);
        }
        // The way most tokio-postgres code reads: query(&str) prepares each time, so every read is
        // Parse/Describe/Sync then Bind/Execute/Sync, one after another.
        let mut ad_hoc = Vec::new();
        for i in 0..200i32 {
            let r = c
                .query_one("SELECT inet_server_port(), $1::int4", &[&i])
                .await
                .unwrap_or_else(|e| panic!("extended read {i}: {}\n{}", pg_error(&e), p.log()));
            assert_eq!(r.get::<_, i32>(1), i, "extended read {i}: wrong parameter echoed");
            ad_hoc.push(r.get::<_, i32>(0) as u16);
        }
        problems.add(spread_problem(
            cluster,
            "200 sequential executions of one prepared statement (tokio-postgres)",
            &prepared,
        ));
        problems.add(spread_problem(
            cluster,
            "200 sequential query(&str, params) reads (tokio-postgres: Parse/Describe/Sync, then Bind/Execute/Sync)",
            &ad_hoc,
        ));
        prepared.extend(ad_hoc);
        prepared
    });

    // The per-node query counters grew at least by the reads each follower answered.
    let after = queries_by_node(&p.metrics());
    for (i, port) in cluster.ports.iter().enumerate().skip(1) {
        let node = format!("node{i}");
        let served = simple.iter().chain(&extended).filter(|p| *p == port).count() as f64;
        let grew = after.get(&node).copied().unwrap_or(0.0) - before.get(&node).copied().unwrap_or(0.0);
        problems.check(served > 0.0 && grew >= served, || {
            format!(
                "pgcausal_queries_total{{node=\"{node}\"}} grew by {grew}, and {node} answered {served} reads; \
                 before {before:?}, after {after:?}"
            )
        });
    }

    rt.block_on(async {
        let c = connect(&p, db).await;
        let mut check_write = |sql: &str, how: &str, seen: Result<(u16, String), String>| match seen {
            Err(e) => problems.check(false, || format!("{sql} ({how}) failed: {e}")),
            Ok((port, ro)) => problems.check(port == leader && ro == "off", || {
                format!(
                    "{sql} ({how}): answered by {} with transaction_read_only={ro}; expected the leader {}",
                    name(cluster, port),
                    name(cluster, leader)
                )
            }),
        };
        // Writes, simple protocol: each reports the leader's port and a read-write server.
        // (No pg_is_in_recovery() here: the classifier sends that to the leader by itself.)
        let writes = [
            "INSERT INTO t (v) VALUES (1) RETURNING inet_server_port(), current_setting('transaction_read_only'), id",
            "SELECT inet_server_port(), current_setting('transaction_read_only'), nextval('s')",
            "SELECT inet_server_port(), current_setting('transaction_read_only'), v FROM t WHERE id = 1 FOR UPDATE",
            "WITH x AS (INSERT INTO t (v) VALUES (2) RETURNING id) \
             SELECT inet_server_port(), current_setting('transaction_read_only'), id FROM x",
            "SELECT inet_server_port(), current_setting('transaction_read_only'), my_write_fn()",
            "UPDATE t SET v = v + 1 WHERE id = 1 RETURNING inet_server_port(), current_setting('transaction_read_only')",
            "DELETE FROM t WHERE id > 1 AND v = 2 RETURNING inet_server_port(), current_setting('transaction_read_only')",
        ];
        for _ in 0..3 {
            for sql in writes {
                let seen = try_rows(&c, sql).await.and_then(|rows| {
                    let r = rows.into_iter().next().ok_or_else(|| "no row".to_string())?;
                    Ok((parse_port(sql, r[0].as_deref())?, r[1].clone().unwrap_or_default()))
                });
                check_write(sql, "simple", seen);
            }
        }
        // Writes with parameters, extended protocol.
        let ext_writes = [
            "INSERT INTO t (v) VALUES ($1) RETURNING inet_server_port(), current_setting('transaction_read_only')",
            "SELECT inet_server_port(), current_setting('transaction_read_only'), nextval('s') + $1",
            "SELECT inet_server_port(), current_setting('transaction_read_only') FROM t WHERE id = $1 FOR UPDATE",
            "WITH x AS (INSERT INTO t (v) VALUES ($1) RETURNING id) \
             SELECT inet_server_port(), current_setting('transaction_read_only') FROM x",
            "SELECT inet_server_port(), current_setting('transaction_read_only'), my_write_fn($1)",
        ];
        for round in 0..3 {
            for sql in ext_writes {
                let param: i32 = if sql.contains("id = $1") { 1 } else { 10 + round };
                let param64 = param as i64;
                let params: &[&(dyn tokio_postgres::types::ToSql + Sync)] =
                    if sql.contains("nextval") { &[&param64] } else { &[&param] };
                let seen = match tokio::time::timeout(QUERY_TIMEOUT, c.query_one(sql, params)).await {
                    Err(_) => Err(format!("no answer within {QUERY_TIMEOUT:?}")),
                    Ok(Err(e)) => Err(pg_error(&e)),
                    Ok(Ok(r)) => Ok((r.get::<_, i32>(0) as u16, r.get::<_, String>(1))),
                };
                check_write(sql, "extended", seen);
            }
        }
        // DDL and writes without rows: a follower would reject them.
        for sql in [
            "CREATE TABLE ddl_simple (a int); INSERT INTO ddl_simple VALUES (1); DROP TABLE ddl_simple",
            "CREATE TABLE ddl_simple2 (a int)",
            "ALTER TABLE ddl_simple2 ADD COLUMN b int",
            "DROP TABLE ddl_simple2",
        ] {
            if let Err(e) = c.batch_execute(sql).await {
                problems.check(false, || format!("{sql}: {}", pg_error(&e)));
            }
        }
        match c.execute("UPDATE t SET v = v WHERE id = $1", &[&1i32]).await {
            Ok(n) => problems.check(n == 1, || format!("extended UPDATE changed {n} rows")),
            Err(e) => problems.check(false, || format!("extended UPDATE: {}", pg_error(&e))),
        }
    });
    problems.finish();
}

#[test]
fn read_only_transaction_stays_on_one_follower() {
    let _serial = serial();
    let cluster = shared_cluster();
    let db = "routing_ro_tx";
    cluster.create_database(db);
    let p = ProxyProcess::start(cluster, routing_options());
    let leader = leader_port(cluster);
    let rt = runtime();
    rt.block_on(async {
        let mut c = connect(&p, db).await;
        warm_up(cluster, &c).await;
        let mut used = Vec::new();
        for round in 0..4 {
            // BEGIN READ ONLY, simple protocol.
            exec(&c, "BEGIN READ ONLY").await;
            let mut ports = Vec::new();
            for _ in 0..5 {
                ports.push(simple_port(&c, "SELECT inet_server_port()").await);
            }
            let rec = row(&c, "SELECT pg_is_in_recovery(), inet_server_port()").await;
            ports.push(parse_port("pg_is_in_recovery", rec[1].as_deref()).unwrap());
            exec(&c, "COMMIT").await;
            let what = format!("round {round}: BEGIN READ ONLY; 6 SELECTs; COMMIT");
            assert_all_on_followers(cluster, &what, &ports);
            assert_all_on(cluster, &format!("{what} (one node)"), &ports, ports[0]);
            assert_eq!(rec[0].as_deref(), Some("t"), "{what}: pg_is_in_recovery() inside the transaction");
            used.push(ports[0]);

            // START TRANSACTION READ ONLY (tokio-postgres' builder), extended protocol.
            let tx = c.build_transaction().read_only(true).start().await.expect("START TRANSACTION READ ONLY");
            let mut ports = Vec::new();
            for _ in 0..5 {
                ports.push(ext_port(&tx, "SELECT inet_server_port()").await);
            }
            let rec = tx.query_one("SELECT pg_is_in_recovery(), inet_server_port()", &[]).await.expect("recovery");
            ports.push(rec.get::<_, i32>(1) as u16);
            tx.commit().await.expect("COMMIT");
            let what = format!("round {round}: START TRANSACTION READ ONLY; 6 extended SELECTs; COMMIT");
            assert_all_on_followers(cluster, &what, &ports);
            assert_all_on(cluster, &format!("{what} (one node)"), &ports, ports[0]);
            assert!(rec.get::<_, bool>(0), "{what}: pg_is_in_recovery() inside the transaction was false");
            used.push(ports[0]);

            // BEGIN; SET TRANSACTION READ ONLY; then reads, both protocols.
            exec(&c, "BEGIN").await;
            exec(&c, "SET TRANSACTION READ ONLY").await;
            let mut ports = Vec::new();
            for i in 0..5 {
                ports.push(if i % 2 == 0 {
                    simple_port(&c, "SELECT inet_server_port()").await
                } else {
                    ext_port(&c, "SELECT inet_server_port()").await
                });
            }
            let rec = row(&c, "SELECT pg_is_in_recovery(), current_setting('transaction_read_only')").await;
            exec(&c, "COMMIT").await;
            let what = format!("round {round}: BEGIN; SET TRANSACTION READ ONLY; 5 SELECTs; COMMIT");
            assert_all_on_followers(cluster, &what, &ports);
            assert_all_on(cluster, &format!("{what} (one node)"), &ports, ports[0]);
            assert_eq!(
                (rec[0].as_deref(), rec[1].as_deref()),
                (Some("t"), Some("on")),
                "{what}: (pg_is_in_recovery, transaction_read_only) inside the transaction"
            );
            used.push(ports[0]);

            // A plain BEGIN ... COMMIT runs entirely on the leader, reads included.
            exec(&c, "BEGIN").await;
            let mut ports = Vec::new();
            for i in 0..5 {
                ports.push(if i % 2 == 0 {
                    simple_port(&c, "SELECT inet_server_port()").await
                } else {
                    ext_port(&c, "SELECT inet_server_port()").await
                });
            }
            exec(&c, "COMMIT").await;
            assert_all_on(cluster, &format!("round {round}: BEGIN; 5 SELECTs; COMMIT"), &ports, leader);

            // The same through tokio-postgres' transaction() (BEGIN), extended protocol.
            let tx = c.transaction().await.expect("BEGIN");
            let mut ports = Vec::new();
            for _ in 0..3 {
                ports.push(ext_port(&tx, "SELECT inet_server_port()").await);
            }
            tx.commit().await.expect("COMMIT");
            assert_all_on(
                cluster,
                &format!("round {round}: transaction(); 3 extended SELECTs; COMMIT"),
                &ports,
                leader,
            );
        }
        eprintln!("read-only transactions ran on {:?}", tally(cluster, &used));
        // After all that, reads outside transactions are back on the followers.
        let mut ports = Vec::new();
        for _ in 0..10 {
            ports.push(simple_port(&c, "SELECT inet_server_port()").await);
        }
        assert_all_on_followers(cluster, "reads after the transactions", &ports);
    });
}

/// The misclassification safety net: a function created after the proxy loaded its catalog of
/// volatile functions looks like a read, runs on a follower, which refuses its write (25006),
/// and the proxy re-runs it on the leader before the client saw anything.
#[test]
fn a_write_taken_for_a_read_is_rerun_on_the_leader() {
    let _serial = serial();
    let cluster = shared_cluster();
    let db = "routing_safety_net";
    cluster.create_database(db);
    let p = ProxyProcess::start(cluster, routing_options());
    let leader = leader_port(cluster);
    let rt = runtime();
    rt.block_on(async {
        let c = connect(&p, db).await;
        warm_up(cluster, &c).await;
        exec(&c, "CREATE TABLE audit (id serial PRIMARY KEY, at_port int)").await;
        for f in ["sneaky_write", "sneaky_write2"] {
            let body = format!(
                "CREATE FUNCTION {f}() RETURNS int LANGUAGE plpgsql AS $$ BEGIN \
                 INSERT INTO audit (at_port) VALUES (inet_server_port()); RETURN inet_server_port(); END $$"
            );
            exec(&c, &body).await;
        }
        // The followers must know the functions, or they would refuse them for another reason.
        p.wait_for_followers();
        let first = simple_port(&c, "SELECT sneaky_write()").await;
        assert_eq!(first, leader, "the write ran, and on the leader");
        let again = c.query_one("SELECT sneaky_write()", &[]).await.expect("extended, now remembered");
        assert_eq!(again.get::<_, i32>(0) as u16, leader);
        let metrics = p.metrics();
        let retries: f64 = metrics
            .lines()
            .filter(|l| l.starts_with("pgcausal_route_retries_total") && l.contains("25006"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert!(retries >= 1.0, "no 25006 re-run counted:\n{metrics}");
        // Pipelined with a command the proxy answers: nothing hangs, and the write is either
        // re-run or its 25006 is reported; it never runs twice or silently not at all.
        let (write, route) = tokio::time::timeout(std::time::Duration::from_secs(20), async {
            tokio::join!(c.query("SELECT sneaky_write2()", &[]), c.query("SHOW pgcausal.route", &[]))
        })
        .await
        .expect("a pipeline of a misrouted write and a proxy command hung");
        assert_eq!(route.expect("SHOW pgcausal.route")[0].get::<_, String>(0), "auto");
        eprintln!("pipelined misrouted write: {:?}", write.as_ref().map(|r| r.len()).map_err(pg_error));
        let expected_rows = match write {
            Ok(rows) => {
                assert_eq!(rows[0].get::<_, i32>(0) as u16, leader);
                3
            }
            Err(e) => {
                assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("25006"), "{}", pg_error(&e));
                2
            }
        };
        let rows = row(
            &c,
            "/* pgcausal:leader */ SELECT count(*), count(*) FILTER (WHERE at_port <> inet_server_port()) FROM audit",
        )
        .await;
        assert_eq!(
            rows,
            vec![Some(expected_rows.to_string()), Some("0".to_string())],
            "rows written, and written elsewhere than the leader"
        );
    });
}

#[test]
fn hints_and_pins_route_to_the_leader() {
    let _serial = serial();
    let cluster = shared_cluster();
    let db = "routing_hints";
    cluster.create_database(db);
    let p = ProxyProcess::start(cluster, routing_options());
    let leader = leader_port(cluster);
    let rt = runtime();
    rt.block_on(async {
        let c = connect(&p, db).await;
        warm_up(cluster, &c).await;
        // A client that never pins: must keep reading from followers whatever the others do.
        let bystander = connect(&p, db).await;
        let bystander_reads = |what: &'static str| {
            let bystander = &bystander;
            async move {
                let mut ports = Vec::new();
                for _ in 0..6 {
                    ports.push(simple_port(bystander, "SELECT inet_server_port()").await);
                }
                assert_all_on_followers(cluster, &format!("an unpinned client while {what}"), &ports);
            }
        };

        // The leader hint comment, both protocols.
        let hinted = "/* pgcausal:leader */ SELECT inet_server_port()";
        let mut ports = Vec::new();
        for _ in 0..5 {
            ports.push(simple_port(&c, hinted).await);
            ports.push(ext_port(&c, hinted).await);
        }
        assert_all_on(cluster, hinted, &ports, leader);
        let mut ports = Vec::new();
        for _ in 0..6 {
            ports.push(simple_port(&c, "SELECT inet_server_port()").await);
        }
        assert_all_on_followers(cluster, "unhinted reads after hinted ones", &ports);

        // SET pgcausal.route: answered by the proxy, pins the session until auto.
        assert_eq!(row(&c, "SHOW pgcausal.route").await, vec![Some("auto".to_string())], "SHOW pgcausal.route at start");
        exec(&c, "SET pgcausal.route = leader").await;
        assert_eq!(row(&c, "SHOW pgcausal.route").await, vec![Some("leader".to_string())], "SHOW after SET leader");
        let mut ports = Vec::new();
        for _ in 0..5 {
            ports.push(simple_port(&c, "SELECT inet_server_port()").await);
            ports.push(ext_port(&c, "SELECT inet_server_port()").await);
        }
        assert_all_on(cluster, "reads after SET pgcausal.route = leader", &ports, leader);
        // Never forwarded: the server does not know the placeholder setting.
        let seen = row(&c, "SELECT current_setting('pgcausal.route', true), inet_server_port()").await;
        assert_eq!(
            seen[0], None,
            "SET pgcausal.route reached a server: current_setting('pgcausal.route') = {:?} on {:?}",
            seen[0], seen[1]
        );
        bystander_reads("another client has SET pgcausal.route = leader").await;

        exec(&c, "SET pgcausal.route = follower").await;
        assert_eq!(row(&c, "SHOW pgcausal.route").await, vec![Some("follower".to_string())], "SHOW after SET follower");
        let mut ports = Vec::new();
        for _ in 0..6 {
            ports.push(simple_port(&c, "SELECT inet_server_port()").await);
        }
        assert_all_on_followers(cluster, "reads after SET pgcausal.route = follower", &ports);

        exec(&c, "SET pgcausal.route = auto").await;
        assert_eq!(row(&c, "SHOW pgcausal.route").await, vec![Some("auto".to_string())], "SHOW after SET auto");
        let mut ports = Vec::new();
        for _ in 0..5 {
            ports.push(simple_port(&c, "SELECT inet_server_port()").await);
            ports.push(ext_port(&c, "SELECT inet_server_port()").await);
        }
        assert_all_on_followers(cluster, "reads after SET pgcausal.route = auto", &ports);

        // Prepared (extended protocol: tokio-postgres prepares everything, asks for binary
        // results, and pipelines) the commands are answered by the proxy too.
        c.execute("SET pgcausal.route = leader", &[]).await.expect("prepared SET");
        let shown = c.prepare("SHOW pgcausal.route").await.expect("prepare SHOW");
        let route = |rows: Vec<tokio_postgres::Row>| rows[0].get::<_, String>(0);
        assert_eq!(route(c.query(&shown, &[]).await.unwrap()), "leader", "named prepared SHOW after prepared SET");
        let (show, port) = tokio::join!(c.query(&shown, &[]), c.query("SELECT inet_server_port()", &[]));
        assert_eq!(route(show.unwrap()), "leader", "pipelined with a query");
        assert_eq!(port.unwrap()[0].get::<_, i32>(0) as u16, leader, "a read after prepared SET route = leader");
        c.execute("RESET pgcausal.route", &[]).await.expect("prepared RESET");
        assert_eq!(route(c.query(&shown, &[]).await.unwrap()), "auto", "the same prepared SHOW again");
        let token = c.query_one("SHOW pgcausal.lsn", &[]).await.expect("prepared SHOW pgcausal.lsn").get::<_, String>(0);
        assert_eq!(token.split('/').count(), 3, "a causal token, timeline/hi/lo: {token}");
        c.execute(&format!("SET pgcausal.min_lsn = '{token}'"), &[]).await.expect("prepared SET min_lsn");
        let e = c.execute("SET pgcausal.min_lsn = 'nonsense'", &[]).await.expect_err("a bad token");
        assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("22023"), "{}", pg_error(&e));
        // Among other statements a pgcausal.* command is refused with 0A000, never passed on:
        // PostgreSQL would keep it as a custom setting on a shared connection.
        let e = c.batch_execute("SET pgcausal.route = leader; SELECT 1").await.expect_err("with another statement");
        assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("0A000"), "{}", pg_error(&e));
        assert_eq!(row(&c, "SHOW pgcausal.route").await, vec![Some("auto".to_string())], "refused SET changed nothing");
        for _ in 0..6 {
            let seen = row(&bystander, "SELECT current_setting('pgcausal.min_lsn', true), current_setting('pgcausal.route', true)").await;
            assert_eq!(seen, vec![None, None], "a pgcausal.* command reached a shared server connection");
        }
        let mut ports = Vec::new();
        for _ in 0..6 {
            ports.push(ext_port(&c, "SELECT inet_server_port()").await);
        }
        assert_all_on_followers(cluster, "reads after prepared RESET pgcausal.route", &ports);

        // LISTEN pins the session to the leader.
        let listener = connect(&p, db).await;
        exec(&listener, "LISTEN routing_channel").await;
        let mut ports = Vec::new();
        for _ in 0..5 {
            ports.push(simple_port(&listener, "SELECT inet_server_port()").await);
            ports.push(ext_port(&listener, "SELECT inet_server_port()").await);
        }
        assert_all_on(cluster, "reads after LISTEN", &ports, leader);
        bystander_reads("another client is LISTENing").await;

        // A temporary table pins the session to the leader, where the table is.
        let temp = connect(&p, db).await;
        exec(&temp, "CREATE TEMP TABLE tt (v int)").await;
        exec(&temp, "INSERT INTO tt VALUES (7)").await;
        let mut ports = Vec::new();
        for _ in 0..5 {
            let r = row(&temp, "SELECT v, inet_server_port() FROM tt").await;
            assert_eq!(r[0].as_deref(), Some("7"), "SELECT v FROM tt (simple) returned {r:?}");
            ports.push(parse_port("tt", r[1].as_deref()).unwrap());
            let r = temp.query_one("SELECT v, inet_server_port() FROM tt", &[]).await.expect("SELECT FROM tt (extended)");
            assert_eq!(r.get::<_, i32>(0), 7, "SELECT v FROM tt (extended)");
            ports.push(r.get::<_, i32>(1) as u16);
            ports.push(simple_port(&temp, "SELECT inet_server_port()").await);
        }
        assert_all_on(cluster, "reads after CREATE TEMP TABLE", &ports, leader);
        bystander_reads("another client has a temporary table").await;

        // A session advisory lock pins the session to the leader until it is released.
        let locker = connect(&p, db).await;
        let r = row(&locker, "SELECT pg_advisory_lock(1), inet_server_port()").await;
        assert_eq!(parse_port("pg_advisory_lock", r[1].as_deref()).unwrap(), leader, "pg_advisory_lock ran on {r:?}");
        let mut ports = Vec::new();
        for _ in 0..5 {
            ports.push(simple_port(&locker, "SELECT inet_server_port()").await);
            ports.push(ext_port(&locker, "SELECT inet_server_port()").await);
        }
        assert_all_on(cluster, "reads while holding pg_advisory_lock(1)", &ports, leader);
        let held = row(
            &locker,
            "/* pgcausal:leader */ SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
        )
        .await;
        assert_eq!(held[0].as_deref(), Some("1"), "the advisory lock must still be held by this session's backend");
        bystander_reads("another client holds an advisory lock").await;
        let r = row(&locker, "SELECT pg_advisory_unlock_all(), inet_server_port()").await;
        assert_eq!(parse_port("pg_advisory_unlock_all", r[1].as_deref()).unwrap(), leader, "unlock_all ran on {r:?}");
        let mut ports = Vec::new();
        for _ in 0..5 {
            ports.push(simple_port(&locker, "SELECT inet_server_port()").await);
            ports.push(ext_port(&locker, "SELECT inet_server_port()").await);
        }
        assert_all_on_followers(cluster, "reads after pg_advisory_unlock_all()", &ports);
        // The lock is really gone (checked directly on the leader).
        assert_eq!(
            cluster.sql(0, db, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"),
            "0",
            "advisory locks left on the leader after pg_advisory_unlock_all()"
        );
    });
}

// ---------------------------------------------------------------------------------------------
// Tests with a cluster of their own
// ---------------------------------------------------------------------------------------------

#[test]
fn stopped_follower_leaves_rotation_without_errors() {
    let _serial = serial();
    let tc = TestCluster::start(2, |_| {});
    let p = ProxyProcess::start(&tc, routing_options());
    let (f1, f2) = (tc.ports[1], tc.ports[2]);
    let rt = runtime();
    let log: ReadLog = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let readers = spawn_readers(&rt, p.conn_str("postgres"), 4, log.clone(), stop.clone());

    // Before: both followers serve reads (enough of them that both pools are in use).
    let both = wait_until(Duration::from_secs(15), || {
        let ports = ports_between(&log, t0, None);
        [f1, f2].iter().all(|f| ports.iter().filter(|p| *p == f).count() >= 30)
    });
    assert!(both.is_some(), "both followers never served 30 reads each: {}", summary(&tc, &log, t0));
    assert_eq!(error_count(&log), 0, "read errors before anything was stopped: {}", summary(&tc, &log, t0));
    let mut problems = Problems::default();

    // Stop follower 1 under load.
    let stopping = Instant::now();
    tc.cluster.lock().unwrap().stop_node(1, StopMode::Fast).expect("stop node1");
    let stopped = Instant::now();
    eprintln!("node1 stop began at t0+{:?}, done at t0+{:?}", stopping - t0, stopped - t0);
    // Let reads run until 3 s after the stop; those that started 2 s after it must all hit node2.
    let window = (stopped + Duration::from_secs(2), stopped + Duration::from_secs(3));
    let ran = wait_until(Duration::from_secs(30), || log.lock().unwrap().iter().any(|r| r.started >= window.1));
    assert!(ran.is_some(), "reads stalled after node1 stopped: {}", summary(&tc, &log, t0));
    let late = ports_between(&log, window.0, Some(window.1));
    problems.check(late.len() >= 20 && late.iter().all(|&p| p == f2), || {
        format!(
            "between 2 s and 3 s after node1 stopped, every read must run on node2 ({f2}); seen {:?}",
            tally(&tc, &late)
        )
    });
    let errors_while_stopped = error_count(&log);

    // Start it again: it rejoins the rotation within 10 s.
    tc.cluster.lock().unwrap().start_node(1).expect("start node1");
    assert_eq!(
        tc.cluster.lock().unwrap().port(1),
        f1,
        "test environment: node1 came back on another port (its port was taken), the proxy cannot know it"
    );
    let started = Instant::now();
    eprintln!("node1 started again at t0+{:?}", started - t0);
    let back = wait_until(Duration::from_secs(10), || ports_between(&log, started, None).contains(&f1));
    stop_readers(&rt, &stop, readers);
    match back {
        Some(after) => eprintln!("node1 back in rotation {after:?} after it started"),
        None => problems.check(false, || {
            format!(
                "node1 did not serve a read within 10 s of starting again; reads since: {:?}",
                tally(&tc, &ports_between(&log, started, None))
            )
        }),
    }
    let errors = error_count(&log);
    problems.check(errors == 0, || {
        format!(
            "{errors} read errors ({errors_while_stopped} by 3 s after the stop, {} after the restart)",
            errors - errors_while_stopped
        )
    });
    problems.check(ports_between(&log, t0, None).iter().all(|&p| p != tc.ports[0]), || {
        "a read ran on the leader though a follower was always up".to_string()
    });
    eprintln!("reads: {}", summary(&tc, &log, stopping));
    if !problems.0.is_empty() {
        problems.0.push(format!("reads (times from the stop call): {}", summary(&tc, &log, stopping)));
    }
    problems.finish();
}

#[test]
fn manual_failover_writes_resume_within_5s() {
    let _serial = serial();
    let tc = TestCluster::start(2, |_| {});
    tc.sql(0, "postgres", "CREATE TABLE w (id serial PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())");
    tc.cluster.lock().unwrap().wait_replicated(Duration::from_secs(30)).expect("replicated");
    let p = ProxyProcess::start(&tc, routing_options());
    let (leader, f1, f2) = (tc.ports[0], tc.ports[1], tc.ports[2]);
    let conn_str = p.conn_str("postgres");
    let rt = runtime();
    let log: ReadLog = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let readers = spawn_readers(&rt, conn_str.clone(), 4, log.clone(), stop.clone());
    let both = wait_until(Duration::from_secs(15), || {
        let ports = ports_between(&log, t0, None);
        ports.contains(&f1) && ports.contains(&f2)
    });
    assert!(both.is_some(), "both followers never served reads: {}", summary(&tc, &log, t0));

    // The writer's client exists before the failover and is reused after it where possible.
    let insert = "INSERT INTO w DEFAULT VALUES RETURNING inet_server_port()";
    let writer = rt.block_on(async {
        let w = connect(&p, "postgres").await;
        assert_eq!(simple_port(&w, insert).await, leader, "INSERT before the failover");
        w
    });

    tc.cluster.lock().unwrap().stop_node(0, StopMode::Immediate).expect("kill the leader");
    let killed = Instant::now();
    // Writes retry from now on: held, failed, whatever the proxy does while there is no leader.
    type Attempts = Arc<Mutex<Vec<(Instant, Result<u16, String>)>>>;
    let attempts: Attempts = Arc::default();
    let promote_called = Instant::now();
    let writer_task = {
        let (attempts, conn_str) = (attempts.clone(), conn_str.clone());
        rt.spawn(async move {
            let mut client = Some(writer);
            let mut reconnects = 0;
            let deadline = promote_called + Duration::from_secs(30);
            while Instant::now() < deadline {
                if client.as_ref().is_none_or(Client::is_closed) {
                    reconnects += 1;
                    match try_connect(&conn_str).await {
                        Ok(c) => client = Some(c),
                        Err(e) => {
                            attempts.lock().unwrap().push((Instant::now(), Err(e)));
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    }
                }
                let outcome = try_simple_port(client.as_ref().unwrap(), insert).await;
                let ok = outcome.is_ok();
                attempts.lock().unwrap().push((Instant::now(), outcome));
                if ok {
                    return reconnects;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            reconnects
        })
    };
    tc.cluster.lock().unwrap().promote(1).expect("promote node1");
    let promoted = Instant::now();
    eprintln!("leader killed at t0+{:?}; pg_ctl promote took {:?}", killed - t0, promoted - promote_called);
    let reconnects = rt.block_on(async { tokio::time::timeout(Duration::from_secs(40), writer_task).await });
    let attempts_text = {
        let a = attempts.lock().unwrap();
        let lines: Vec<String> =
            a.iter().map(|(at, r)| format!("promote+{:?}: {r:?}", at.duration_since(promote_called))).collect();
        lines.join("\n")
    };
    let first_ok = attempts.lock().unwrap().iter().find(|(_, r)| r.is_ok()).map(|(at, r)| (*at, r.clone().unwrap()));
    let Some((ok_at, port)) = first_ok else {
        stop_readers(&rt, &stop, readers);
        panic!("no INSERT succeeded within 30 s of the promote call; attempts:\n{attempts_text}\n{}", p.log());
    };
    let took = ok_at.duration_since(promote_called);
    eprintln!(
        "first INSERT after failover: {took:?} after the promote call ({:?} after pg_ctl promote returned), \
         client reconnects: {:?}",
        ok_at.saturating_duration_since(promoted),
        reconnects.ok().and_then(Result::ok)
    );
    assert_eq!(port, f1, "the first INSERT after the failover ran on {}, expected node1 ({f1})", name(&tc, port));
    // The clock starts when the promoted node accepts writes: how long PostgreSQL takes to leave
    // recovery is not the proxy's to shorten (it took 5 s once on a CI machine, 0.1 s here).
    let promote_took = promoted - promote_called;
    if promote_took > Duration::from_secs(1) {
        let log = tc.cluster.lock().unwrap().log_path(1).map(|p| std::fs::read_to_string(p).unwrap_or_default());
        let log = log.unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        eprintln!(
            "pg_ctl promote took {promote_took:?}; node1 log tail:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    let after_promote = ok_at.saturating_duration_since(promoted);
    assert!(
        after_promote < Duration::from_secs(5),
        "writes resumed {after_promote:?} after the promoted node accepted writes (limit 5 s; {took:?} after the \
         promote call); attempts:\n{attempts_text}"
    );

    // New connections write to the new leader too.
    rt.block_on(async {
        let c = connect(&p, "postgres").await;
        let r = row(
            &c,
            "INSERT INTO w DEFAULT VALUES RETURNING inet_server_port(), current_setting('transaction_read_only')",
        )
        .await;
        assert_eq!(
            (parse_port(insert, r[0].as_deref()).unwrap(), r[1].as_deref()),
            (f1, Some("off")),
            "INSERT on a new connection after the failover: {r:?}"
        );
    });

    // Reads kept working all along (node2 still follows the dead leader: stale, but it answers).
    let after_ok = Instant::now();
    let more = wait_until(Duration::from_secs(15), || ports_between(&log, after_ok, None).len() >= 20);
    stop_readers(&rt, &stop, readers);
    assert!(more.is_some(), "reads stalled after the failover: {}", summary(&tc, &log, t0));
    let during = ports_between(&log, killed, Some(ok_at));
    eprintln!("reads during the failover: {:?}; overall {}", tally(&tc, &during), summary(&tc, &log, t0));
    assert_eq!(error_count(&log), 0, "read errors around the failover: {}", summary(&tc, &log, t0));
    assert!(!during.is_empty(), "no read completed between the kill and the first write: {}", summary(&tc, &log, t0));
    assert!(
        ports_between(&log, killed, None).iter().all(|&p| p != leader),
        "a read was answered by the killed leader's port after the kill: {}",
        summary(&tc, &log, t0)
    );
}

#[test]
fn no_follower_means_reads_on_the_leader() {
    let _serial = serial();
    let tc = TestCluster::start(0, |_| {});
    let p = ProxyProcess::start(&tc, routing_options());
    let leader = tc.ports[0];
    let rt = runtime();
    rt.block_on(async {
        let c = connect(&p, "postgres").await;
        let mut ports = Vec::new();
        for _ in 0..20 {
            ports.push(simple_port(&c, "SELECT inet_server_port()").await);
            ports.push(ext_port(&c, "SELECT inet_server_port()").await);
        }
        assert_all_on(&tc, "reads with no follower in the cluster", &ports, leader);

        // A read-only transaction has no follower to go to either.
        exec(&c, "BEGIN READ ONLY").await;
        let mut ports = Vec::new();
        for _ in 0..3 {
            ports.push(simple_port(&c, "SELECT inet_server_port()").await);
        }
        exec(&c, "COMMIT").await;
        assert_all_on(&tc, "BEGIN READ ONLY with no follower", &ports, leader);

        // psql too, and writes as usual.
        let out = ok(p.psql("postgres", &["-c", "SELECT inet_server_port()"], None));
        assert_eq!(out.trim(), leader.to_string(), "psql read with no follower");
        exec(&c, "CREATE TABLE solo (v int)").await;
        let r = row(&c, "INSERT INTO solo VALUES (1) RETURNING inet_server_port()").await;
        assert_eq!(r[0].as_deref(), Some(leader.to_string().as_str()), "INSERT with no follower");
        let r = row(&c, "SELECT count(*), inet_server_port() FROM solo").await;
        assert_eq!(r, vec![Some("1".to_string()), Some(leader.to_string())], "read back with no follower");
    });
}

/// The postmaster of a node and its children (backends, walreceiver...), stopped with SIGSTOP
/// for as long as this lives: a node that is alive but answers nothing. SIGCONT on drop, so a
/// failing assertion never leaves a frozen server behind.
struct Frozen(Vec<i32>);

impl Frozen {
    fn node(postmaster: u32) -> Frozen {
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

#[test]
fn one_late_probe_keeps_a_node_in_rotation_and_a_silent_node_leaves_it() {
    let _serial = serial();
    let tc = TestCluster::start(1, |_| {});
    let p = ProxyProcess::start(&tc, routing_options());
    p.wait_for_followers();
    let up = || {
        let metrics = p.metrics();
        let line = metrics.lines().find(|l| l.starts_with("pgcausal_node_up{") && l.contains("node=\"node1\""));
        line.and_then(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
    };
    assert_eq!(up(), Some(1.0), "node1 is up before anything happens");
    let postmaster = tc.cluster.lock().unwrap().pid(1).expect("node1 runs");
    let tolerated =
        || p.log().lines().filter(|l| l.contains("probe timed out; the node keeps") && l.contains("node1")).count();

    // Frozen for 1 s: a probe sent within 0.2 s of the freeze (the probe period) times out at
    // 0.7 s; the next one is answered once the node thaws, so node1 never leaves.
    let before = tolerated();
    {
        let _frozen = Frozen::node(postmaster);
        let until = Instant::now() + Duration::from_millis(1000);
        while Instant::now() < until {
            assert_eq!(up(), Some(1.0), "node1 left rotation after one late probe:\n{}", p.log());
            std::thread::sleep(Duration::from_millis(25));
        }
    }
    let timed_out = wait_until(Duration::from_secs(3), || tolerated() > before);
    assert!(timed_out.is_some(), "the freeze timed out no probe, so it tested nothing:\n{}", p.log());
    assert_eq!(up(), Some(1.0));

    // Frozen until it leaves: two timeouts in a row (about 1.4-1.6 s) take it out of rotation,
    // and it comes back once it answers again.
    {
        let _frozen = Frozen::node(postmaster);
        let left = wait_until(Duration::from_secs(6), || up() == Some(0.0));
        assert!(left.is_some(), "a node silent for 6 s is still in rotation:\n{}", p.log());
        eprintln!("node1 left rotation {left:?} after it froze");
    }
    let back = wait_until(Duration::from_secs(10), || up() == Some(1.0));
    assert!(back.is_some(), "node1 did not come back after it thawed:\n{}", p.log());
    let rows = ok(p.psql("postgres", &["-Atc", "SELECT 1"], None));
    assert_eq!(rows.trim(), "1");
}
