//! pgbench and tokio-postgres through the proxy: pooling modes, extended protocol, pipelining.

mod support;
use std::process::Command;
use support::*;

fn pgbench(p: &ProxyProcess, db: &str, args: &[&str]) -> String {
    let out = Command::new(pg_bin("pgbench"))
        .args(["-h", "127.0.0.1", "-p", &p.port.to_string(), "-U", USER])
        .args(args)
        .arg(db)
        .env("PGPASSWORD", PASSWORD)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pgbench {args:?} failed:\n{text}\n{}", p.log());
    text
}

fn processed(report: &str) -> u64 {
    let line = report.lines().find(|l| l.starts_with("number of transactions actually processed")).expect(report);
    line.split(':').nth(1).unwrap().trim().split('/').next().unwrap().parse().unwrap()
}

#[test]
fn pgbench_all_protocols_in_transaction_and_session_mode() {
    let cluster = shared_cluster();
    cluster.create_database("bench");
    let tx = ProxyProcess::start(cluster, ProxyOptions { pool_size: 4, ..Default::default() });
    pgbench(&tx, "bench", &["-i", "-s", "1", "-q"]);
    for mode in ["simple", "extended"] {
        let report = pgbench(&tx, "bench", &["-c", "16", "-j", "2", "-t", "150", "-M", mode]);
        assert_eq!(processed(&report), 16 * 150, "{report}");
        assert!(report.contains("number of failed transactions: 0 (0.000%)"), "{report}");
    }
    // At most 4 server connections served those 16 clients.
    let leader_conns = cluster.sql(
        0,
        "postgres",
        "SELECT count(*) FROM pg_stat_activity WHERE datname = 'bench' AND application_name = 'pgcausal'",
    );
    assert!(leader_conns.parse::<u32>().unwrap() <= 4, "{leader_conns} server connections");
    drop(tx);
    let session =
        ProxyProcess::start(cluster, ProxyOptions { pool_mode: "session", pool_size: 8, ..Default::default() });
    let report = pgbench(&session, "bench", &["-c", "8", "-j", "2", "-t", "150", "-M", "prepared"]);
    assert_eq!(processed(&report), 8 * 150, "{report}");
    assert!(report.contains("number of failed transactions: 0 (0.000%)"), "{report}");
}

#[test]
fn pgbench_prepared_32_clients_over_4_connections_in_transaction_mode() {
    let cluster = shared_cluster();
    cluster.create_database("bench_prepared");
    let tx = ProxyProcess::start(cluster, ProxyOptions { pool_size: 4, ..Default::default() });
    pgbench(&tx, "bench_prepared", &["-i", "-s", "1", "-q"]);
    let report = pgbench(&tx, "bench_prepared", &["-c", "32", "-j", "2", "-t", "100", "-M", "prepared"]);
    assert_eq!(processed(&report), 32 * 100, "{report}");
    assert!(report.contains("number of failed transactions: 0 (0.000%)"), "{report}");
}

#[test]
fn tokio_postgres_in_session_mode() {
    tokio_postgres_workout("session", "tokio_pg_session");
}

#[test]
fn tokio_postgres_in_transaction_mode() {
    // Named statements prepared once and reused across transactions on 4 shared connections.
    tokio_postgres_workout("transaction", "tokio_pg_tx");
}

/// Binary parameters and results, pipelining, transactions, errors: through one proxy.
fn tokio_postgres_workout(pool_mode: &'static str, db: &str) {
    let cluster = shared_cluster();
    cluster.create_database(db);
    let p = ProxyProcess::start(cluster, ProxyOptions { pool_mode, ..Default::default() });
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (mut client, conn) = tokio_postgres::connect(&p.conn_str(db), tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        client
            .batch_execute("CREATE TABLE kv (k bigint primary key, v text, b bytea, f float8, ts timestamptz)")
            .await
            .unwrap();

        // Binary parameters and results.
        let blob: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
        let now = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        client
            .execute("INSERT INTO kv VALUES ($1, $2, $3, $4, $5)", &[&7i64, &"seven", &blob, &1.5f64, &now])
            .await
            .unwrap();
        let row = client.query_one("SELECT k, v, b, f, ts FROM kv WHERE k = $1", &[&7i64]).await.unwrap();
        assert_eq!(row.get::<_, i64>(0), 7);
        assert_eq!(row.get::<_, &str>(1), "seven");
        assert_eq!(row.get::<_, Vec<u8>>(2), blob);
        assert_eq!(row.get::<_, f64>(3), 1.5);
        assert_eq!(row.get::<_, std::time::SystemTime>(4), now);

        // Pipelined: many queries in flight on one connection, answers in order.
        let stmt = client.prepare("SELECT $1::int4 * 2").await.unwrap();
        let futures = (0..200i32).map(|i| {
            let (client, stmt) = (&client, &stmt);
            async move { client.query_one(stmt, &[&i]).await.map(|r| r.get::<_, i32>(0)) }
        });
        let doubled: Vec<i32> = futures::future::join_all(futures).await.into_iter().map(Result::unwrap).collect();
        assert_eq!(doubled, (0..200).map(|i| i * 2).collect::<Vec<_>>());

        // A transaction that commits and one that rolls back.
        let tx = client.transaction().await.unwrap();
        tx.execute("INSERT INTO kv (k, v) VALUES (1, 'kept')", &[]).await.unwrap();
        tx.commit().await.unwrap();
        let tx = client.transaction().await.unwrap();
        tx.execute("INSERT INTO kv (k, v) VALUES (2, 'dropped')", &[]).await.unwrap();
        tx.rollback().await.unwrap();
        let keys: Vec<i64> =
            client.query("SELECT k FROM kv ORDER BY k", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
        assert_eq!(keys, vec![1, 7]);

        // An error, then the connection keeps working; an empty query too.
        let err = client.query("SELECT 1/0", &[]).await.unwrap_err();
        assert_eq!(err.code(), Some(&tokio_postgres::error::SqlState::DIVISION_BY_ZERO));
        assert!(client.simple_query("").await.is_ok());
        assert_eq!(client.query_one("SELECT 'ok'::text", &[]).await.unwrap().get::<_, &str>(0), "ok");
    });
}

/// `proxy.max_client_connections_per_user` and `_per_database` refuse the client over the limit
/// with 53300 and PostgreSQL's words, a freed place is taken again, and the admin console is
/// never refused.
#[test]
fn per_user_and_per_database_limits_refuse_with_53300_and_free_up_on_disconnect() {
    let cluster = shared_cluster();
    cluster.create_database("limits_a");
    cluster.create_database("limits_b");
    let proxy_section = "max_client_connections_per_user = 2\nmax_client_connections_per_database = 3\n".to_string();
    let extra = format!("[admin]\nusers = [\"{USER}\"]\n");
    let p = ProxyProcess::start(cluster, ProxyOptions { proxy_section, extra, ..Default::default() });
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let connect = |user: &str, db: &str| {
        let conn = match user {
            USER => p.conn_str(db),
            _ => p.trust_conn_str(db),
        };
        rt.block_on(async {
            let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await?;
            let task = tokio::spawn(connection);
            client.simple_query("SELECT 1").await?;
            Ok::<_, tokio_postgres::Error>((client, task))
        })
    };
    let refused = |r: Result<_, tokio_postgres::Error>| {
        let Err(e) = r else { panic!("not refused") };
        (e.code().map(|c| c.code().to_string()), e.as_db_error().map(|d| d.message().to_string()))
    };
    let first = connect(USER, "limits_a").unwrap();
    let _second = connect(USER, "limits_a").unwrap();
    let over = refused(connect(USER, "limits_b"));
    assert_eq!(over, (Some("53300".into()), Some(format!("too many connections for role \"{USER}\""))));
    // The admin console is not counted and never refused.
    let shown = p.admin("SHOW CLIENTS");
    assert!(shown.len() >= 3, "{shown:?}");
    // Another user fills database limits_a to its limit of 3, then is refused there, not elsewhere.
    let _third = connect(TRUST_USER, "limits_a").unwrap();
    let over = refused(connect(TRUST_USER, "limits_a"));
    assert_eq!(over, (Some("53300".into()), Some("too many connections for database \"limits_a\"".into())));
    let _elsewhere = connect(TRUST_USER, "limits_b").unwrap();
    // A place freed is taken again.
    drop(first);
    let again = wait_for_ok(|| connect(USER, "limits_b"));
    drop(again);
    let page = p.metrics();
    assert!(page.contains("class=\"53\""), "refusals counted by class: {page}");
}

/// Retries `f` for up to 5 s (a closed client leaves the registry once its session ends).
fn wait_for_ok<T, E: std::fmt::Debug>(mut f: impl FnMut() -> Result<T, E>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if std::time::Instant::now() >= deadline => panic!("still refused: {e:?}"),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    }
}

/// `proxy.idle_in_transaction_timeout` closes a client idle inside a transaction with 25P03 and
/// frees its server connection (the transaction rolled back); `proxy.client_idle_timeout`
/// closes one idle between transactions with 57P05; a client that keeps working is untouched.
#[test]
fn idle_timeouts_close_idle_clients_with_postgresql_codes_and_free_their_server() {
    let cluster = shared_cluster();
    cluster.create_database("idle_timeouts");
    cluster.sql(0, "idle_timeouts", "CREATE TABLE IF NOT EXISTS t (id int)");
    let proxy_section = "idle_in_transaction_timeout = \"1s\"\nclient_idle_timeout = \"3s\"\n".to_string();
    let p = ProxyProcess::start(cluster, ProxyOptions { proxy_section, ..Default::default() });
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let connect = || async {
            let (client, connection) =
                tokio_postgres::connect(&p.conn_str("idle_timeouts"), tokio_postgres::NoTls).await.unwrap();
            (client, tokio::spawn(connection))
        };
        // The connection task ends with the server's (here the proxy's) FATAL.
        let closed_with = |task: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>| async move {
            let ended = tokio::time::timeout(std::time::Duration::from_secs(10), task).await.expect("closed in time");
            ended.unwrap().err().and_then(|e| e.code().map(|c| c.code().to_string()))
        };
        let (in_tx, in_tx_task) = connect().await;
        in_tx.batch_execute("BEGIN; INSERT INTO t VALUES (1)").await.unwrap();
        // Each wait is timed from its own start: the client's last answer.
        let in_tx_idle_since = std::time::Instant::now();
        let (idle, idle_task) = connect().await;
        idle.simple_query("SELECT 1").await.unwrap();
        let idle_since = std::time::Instant::now();
        let (busy, busy_task) = connect().await;
        let started = std::time::Instant::now();
        assert_eq!(closed_with(in_tx_task).await.as_deref(), Some("25P03"));
        let in_tx_after = in_tx_idle_since.elapsed();
        // Its server connection is free: no transaction of this database stays open on the leader.
        let open = cluster.sql(
            0,
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE datname = 'idle_timeouts' AND state LIKE 'idle in transaction%'",
        );
        assert_eq!(open.trim(), "0", "the idle transaction's server connection was not freed");
        // Working every 500 ms (below both timeouts) keeps a client open.
        while started.elapsed() < std::time::Duration::from_secs(4) {
            busy.simple_query("SELECT 1").await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        assert_eq!(closed_with(idle_task).await.as_deref(), Some("57P05"));
        let idle_after = idle_since.elapsed();
        assert!(!busy_task.is_finished(), "a working client was closed");
        busy.simple_query("SELECT 1").await.unwrap();
        let rows = cluster.sql(0, "idle_timeouts", "SELECT count(*) FROM t");
        assert_eq!(rows.trim(), "0", "the timed-out transaction was rolled back");
        println!("idle in transaction closed after {in_tx_after:?}, idle session after {idle_after:?}");
        assert!(in_tx_after >= std::time::Duration::from_secs(1), "{in_tx_after:?}");
        assert!(idle_after >= std::time::Duration::from_secs(3), "{idle_after:?}");
    });
}
