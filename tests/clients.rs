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
