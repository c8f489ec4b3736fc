//! Transaction pooling without surprises: named prepared statements follow each client across
//! shared server connections.

mod support;
use support::*;

#[test]
fn fifty_clients_share_and_close_named_statements_over_two_connections() {
    let cluster = shared_cluster();
    cluster.create_database("stmts");
    let p = ProxyProcess::start(cluster, ProxyOptions { pool_size: 2, ..Default::default() });
    let rt = tokio::runtime::Runtime::new().unwrap();
    let conn_str = p.conn_str("stmts");
    rt.block_on(async move {
        let mut tasks = Vec::new();
        for k in 0..50i32 {
            let conn_str = conn_str.clone();
            tasks.push(tokio::spawn(async move {
                let (mut client, conn) = tokio_postgres::connect(&conn_str, tokio_postgres::NoTls).await.unwrap();
                tokio::spawn(conn);
                // The same SQL as every other client, and SQL only this client uses.
                let shared = client.prepare("SELECT $1::int4 + 1").await.unwrap();
                let mut own = client.prepare(&format!("SELECT $1::int4 * {k}")).await.unwrap();
                for i in 0..100i32 {
                    if i % 3 == 0 {
                        let tx = client.transaction().await.unwrap();
                        let a: i32 = tx.query_one(&shared, &[&i]).await.unwrap().get(0);
                        let b: i32 = tx.query_one(&own, &[&i]).await.unwrap().get(0);
                        tx.commit().await.unwrap();
                        assert_eq!((a, b), (i + 1, i * k));
                    } else {
                        let a: i32 = client.query_one(&shared, &[&i]).await.unwrap().get(0);
                        let b: i32 = client.query_one(&own, &[&i]).await.unwrap().get(0);
                        assert_eq!((a, b), (i + 1, i * k));
                    }
                    if i % 25 == 24 {
                        // Dropping a statement sends Close; a fresh one is prepared in its place.
                        own = client.prepare(&format!("SELECT $1::int4 * {k} /* round {i} */")).await.unwrap();
                    }
                }
            }));
        }
        for t in tasks {
            t.await.expect("client task");
        }
    });
    let m = p.metrics();
    // Every error class is exported from the start at 0: none of these may have counted.
    assert_eq!(
        metric_sum(&m, "pgcausal_errors_total{class=\"26\""),
        0.0,
        "no 'prepared statement does not exist': {m}"
    );
    assert_eq!(metric_sum(&m, "pgcausal_errors_total{class=\"08\""), 0.0, "no protocol errors: {m}");
}

#[test]
fn protocol_errors_around_statements_match_postgres() {
    let cluster = shared_cluster();
    cluster.create_database("stmt_errors");
    let p = ProxyProcess::start(cluster, ProxyOptions { pool_size: 1, ..Default::default() });
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&p.conn_str("stmt_errors"), tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        // A statement that fails to prepare reports the server's error and leaves the client usable.
        let err = client.prepare("SELECT * FROM no_such_table").await.unwrap_err();
        assert_eq!(err.code(), Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE), "{err}");
        let ok = client.prepare("SELECT 1::int4").await.unwrap();
        assert_eq!(client.query_one(&ok, &[]).await.unwrap().get::<_, i32>(0), 1);
        // A statement valid on one connection and invalid on another (table dropped in between).
        client.batch_execute("CREATE TABLE gone (v int); INSERT INTO gone VALUES (5)").await.unwrap();
        let stmt = client.prepare("SELECT v FROM gone").await.unwrap();
        assert_eq!(client.query_one(&stmt, &[]).await.unwrap().get::<_, i32>(0), 5);
        client.batch_execute("DROP TABLE gone").await.unwrap();
        let err = client.query_one(&stmt, &[]).await.unwrap_err();
        assert!(err.code().is_some(), "{err}");
        assert_eq!(client.query_one("SELECT 2::int4", &[]).await.unwrap().get::<_, i32>(0), 2);
    });
}

#[test]
fn sql_level_prepare_execute_deallocate_follow_each_client() {
    let cluster = shared_cluster();
    cluster.create_database("sql_prepare");
    // One server connection per node: both clients' statements share the backends.
    let p = ProxyProcess::start(cluster, ProxyOptions { pool_size: 1, ..Default::default() });
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let connect = || async {
            let (c, conn) = tokio_postgres::connect(&p.conn_str("sql_prepare"), tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            c
        };
        let (a, b) = (connect().await, connect().await);
        async fn value(c: &tokio_postgres::Client, sql: &str) -> Result<Option<String>, tokio_postgres::Error> {
            let rows = c.simple_query(sql).await?;
            Ok(rows.iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            }))
        }
        a.batch_execute("PREPARE p (int) AS SELECT 'a' || $1").await.unwrap();
        b.batch_execute("PREPARE p (int) AS SELECT 'b' || $1").await.unwrap();
        for _ in 0..50 {
            assert_eq!(value(&a, "EXECUTE p(1)").await.unwrap().as_deref(), Some("a1"));
            assert_eq!(value(&b, "EXECUTE p(2)").await.unwrap().as_deref(), Some("b2"));
        }
        // A duplicate name is refused as PostgreSQL would; an unknown one too.
        let err = a.batch_execute("PREPARE p AS SELECT 3").await.unwrap_err();
        assert_eq!(err.code(), Some(&tokio_postgres::error::SqlState::DUPLICATE_PSTATEMENT), "{err:?}");
        a.batch_execute("DEALLOCATE p").await.unwrap();
        let err = value(&a, "EXECUTE p(1)").await.unwrap_err();
        assert_eq!(err.code(), Some(&tokio_postgres::error::SqlState::INVALID_SQL_STATEMENT_NAME), "{err:?}");
        assert_eq!(value(&b, "EXECUTE p(3)").await.unwrap().as_deref(), Some("b3"));
        let err = a.batch_execute("DEALLOCATE nothing_here").await.unwrap_err();
        assert_eq!(err.code(), Some(&tokio_postgres::error::SqlState::INVALID_SQL_STATEMENT_NAME), "{err:?}");
        b.batch_execute("DEALLOCATE ALL").await.unwrap();
        assert!(value(&b, "EXECUTE p(1)").await.is_err());
    });
}

#[test]
fn a_full_pool_queues_times_out_cleanly_and_closes_idle_connections() {
    let cluster = shared_cluster();
    cluster.create_database("poolq");
    cluster.sql(0, "poolq", "CREATE TABLE t (v int)");
    let wait_limit = std::time::Duration::from_millis(700);
    let options = ProxyOptions {
        pool_size: 2,
        pool_section: "acquire_timeout = \"700ms\"\nidle_timeout = \"1s\"".into(),
        ..Default::default()
    };
    let p = ProxyProcess::start(cluster, options);
    let conn_str = p.conn_str("poolq");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let connect = || async {
            let (client, conn) = tokio_postgres::connect(&conn_str, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            client
        };
        // All log in first, so every login's settings are known before the pool fills up.
        let (a, b, c, d) = (connect().await, connect().await, connect().await, connect().await);
        let (x, y) = (connect().await, connect().await);
        // Two open write transactions hold both leader connections.
        for c in [&a, &b] {
            c.batch_execute("BEGIN; INSERT INTO t VALUES (1)").await.unwrap();
        }
        // A third writer waits acquire_timeout, gets 53300, and its session goes on.
        let started = std::time::Instant::now();
        let err = c.batch_execute("INSERT INTO t VALUES (2)").await.unwrap_err();
        assert!(pg_error(&err).contains("53300"), "{}", pg_error(&err));
        assert!(started.elapsed() >= wait_limit, "gave up after {:?}", started.elapsed());
        // A waiting writer is handed the connection a commit returns, well within the limit.
        let waiting = tokio::spawn(async move { d.batch_execute("INSERT INTO t VALUES (3)").await.map(|_| d) });
        a.batch_execute("COMMIT").await.unwrap();
        let d = waiting.await.unwrap().unwrap_or_else(|e| panic!("{}", pg_error(&e)));
        b.batch_execute("COMMIT").await.unwrap();
        // No room was lost to the timeout: two transactions at once still get both connections.
        for t in [&x, &y] {
            t.batch_execute("BEGIN; INSERT INTO t VALUES (4)").await.unwrap();
        }
        for t in [&x, &y] {
            t.batch_execute("COMMIT").await.unwrap();
        }
        c.batch_execute("SET pgcausal.consistency = strong").await.unwrap();
        let rows = c.query_one("SELECT count(*) FILTER (WHERE v = 2), count(*) FROM t", &[]).await.unwrap();
        assert_eq!((rows.get::<_, i64>(0), rows.get::<_, i64>(1)), (0, 5));
        drop((a, b, c, d, x, y));
    });
    let timeouts =
        p.metrics().lines().find(|l| l.starts_with("pgcausal_pool_timeouts_total{node=\"node0\"}")).map(String::from);
    assert_eq!(timeouts.as_deref().and_then(|l| l.split(' ').nth(1)), Some("1"), "{timeouts:?}");
    // Returned connections idle for idle_timeout are closed by the reaper (every second).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let count = "SELECT count(*) FROM pg_stat_activity WHERE datname = 'poolq' AND pid <> pg_backend_pid()";
    loop {
        let open = cluster.sql(0, "postgres", count);
        if open.trim() == "0" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{open} server connections still open after idle_timeout");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// One raw protocol session as the trust user (so the test sees every message of the login).
struct Raw(std::net::TcpStream);

/// ParameterStatus (name, value) pairs in the order a login sent them.
type Told = Vec<(String, String)>;
/// An ErrorResponse's (SQLSTATE, message).
type Failure = (String, String);

impl Raw {
    /// Logs in and returns the session with the ParameterStatus pairs it was sent, in order; the
    /// login's own error (SQLSTATE, message) if it failed.
    fn login(port: u16, db: &str, app: &str) -> Result<(Raw, Told), Failure> {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
        s.write_all(&startup_packet(196608, &[("user", TRUST_USER), ("database", db), ("application_name", app)]))
            .unwrap();
        let mut raw = Raw(s);
        let mut params = Vec::new();
        loop {
            let (tag, body) = raw.message();
            let fields: Vec<String> =
                body.split(|&b| b == 0).map(|f| String::from_utf8_lossy(f).into_owned()).collect();
            match tag {
                b'S' => params.push((fields[0].clone(), fields[1].clone())),
                b'E' => return Err(raw_error(&body)),
                b'Z' => return Ok((raw, params)),
                _ => {}
            }
        }
    }

    fn message(&mut self) -> (u8, Vec<u8>) {
        use std::io::Read;
        let mut header = [0u8; 5];
        self.0.read_exact(&mut header).expect("a message from the proxy");
        let mut body = vec![0u8; u32::from_be_bytes(header[1..].try_into().unwrap()) as usize - 4];
        self.0.read_exact(&mut body).unwrap();
        (header[0], body)
    }

    /// Runs a simple query; its first error, and the transaction status of its ReadyForQuery.
    fn query(&mut self, sql: &str) -> (Option<Failure>, u8) {
        let (error, status, _) = self.query_values(sql);
        (error, status)
    }

    /// `query`, plus the first column of every row (text).
    fn query_values(&mut self, sql: &str) -> (Option<Failure>, u8, Vec<String>) {
        use std::io::Write;
        let body = [sql.as_bytes(), &[0]].concat();
        self.0.write_all(&[&[b'Q'][..], &((body.len() + 4) as u32).to_be_bytes(), &body].concat()).unwrap();
        let (mut error, mut values) = (None, Vec::new());
        loop {
            match self.message() {
                (b'E', body) => error = error.or(Some(raw_error(&body))),
                (b'D', body) => {
                    let len = i32::from_be_bytes(body[2..6].try_into().unwrap()).max(0) as usize;
                    values.push(String::from_utf8_lossy(&body[6..6 + len]).into_owned());
                }
                (b'Z', body) => return (error, body[0], values),
                _ => {}
            }
        }
    }
}

/// (SQLSTATE, message) of an ErrorResponse body.
fn raw_error(body: &[u8]) -> Failure {
    let field = |k: u8| {
        body.split(|&b| b == 0).find(|f| f.first() == Some(&k)).map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
    };
    (field(b'C').unwrap_or_default(), field(b'M').unwrap_or_default())
}

/// A login needs no server connection once one with the same startup settings went through:
/// clients log in (and read on followers) while every leader connection is in a transaction,
/// and are told exactly what the server told the first.
#[test]
fn logins_with_known_settings_do_not_wait_for_a_busy_leader() {
    let cluster = shared_cluster();
    cluster.create_database("loginq");
    cluster.sql(0, "loginq", "CREATE TABLE t (v int)");
    let options =
        ProxyOptions { pool_size: 1, pool_section: "acquire_timeout = \"700ms\"".into(), ..Default::default() };
    let p = ProxyProcess::start(cluster, options);
    let (mut first, told_first) = Raw::login(p.port, "loginq", "known").expect("first login");
    assert!(told_first.contains(&("application_name".into(), "known".into())), "{told_first:?}");
    // The only leader connection stays in a transaction.
    assert_eq!(first.query("BEGIN; INSERT INTO t VALUES (1)"), (None, b'T'));
    let started = std::time::Instant::now();
    let (mut second, told_second) = Raw::login(p.port, "loginq", "known").expect("login while the leader pool is busy");
    assert!(started.elapsed() < std::time::Duration::from_millis(700), "waited {:?}", started.elapsed());
    assert_eq!(told_second, told_first);
    // Its reads run on a follower; its settings went with them.
    let read = "SELECT current_setting('application_name') || ' ' || pg_is_in_recovery() FROM t";
    assert_eq!(second.query_values(read), (None, b'I', vec![]));
    assert_eq!(second.query_values(&read.replace(" FROM t", "")), (None, b'I', vec!["known true".to_string()]));
    // Settings never seen before still need the leader: they wait, then fail like any lease.
    let (code, message) = Raw::login(p.port, "loginq", "unknown").err().expect("no leader connection to learn them");
    assert_eq!(code, "53300", "{message}");
    assert_eq!(first.query("COMMIT"), (None, b'I'));
    // A SET that passed through updates what the connection's next logins are told.
    assert_eq!(first.query("SET application_name = 'renamed'"), (None, b'I'));
    let (_third, told_third) = Raw::login(p.port, "loginq", "renamed").expect("login after the commit");
    assert!(told_third.contains(&("application_name".into(), "renamed".into())), "{told_third:?}");
}
