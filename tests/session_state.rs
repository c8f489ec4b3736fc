//! Session settings and pins under transaction pooling: every client sees its own SETs, on a
//! server connection it shares with others, and state that cannot move pins the client.

mod support;
use support::*;
use tokio_postgres::{Client, NoTls};

async fn connect(p: &ProxyProcess, db: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(&p.conn_str(db), NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

async fn one(c: &Client, sql: &str) -> String {
    let rows = c.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("NULL").to_string()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row"))
}

#[test]
fn each_client_keeps_its_own_settings_on_a_shared_connection() {
    let cluster = shared_cluster();
    cluster.create_database("settings");
    cluster.sql(
        0,
        "settings",
        "CREATE SCHEMA a_schema; CREATE SCHEMA b_schema; CREATE TABLE a_schema.t AS SELECT 'a'::text AS v; \
         CREATE TABLE b_schema.t AS SELECT 'b'::text AS v; CREATE ROLE reader; GRANT USAGE ON SCHEMA a_schema TO reader",
    );
    // One server connection: every statement of every client runs on the same backend.
    let p = ProxyProcess::start(cluster, ProxyOptions { pool_size: 1, ..Default::default() });
    p.wait_for_followers(); // the schemas above were made outside any proxy session
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let a = connect(&p, "settings").await;
        let b = connect(&p, "settings").await;
        let fresh = connect(&p, "settings").await;
        a.batch_execute("SET search_path = a_schema; SET TimeZone = 'Asia/Tokyo'").await.unwrap();
        b.batch_execute("SET search_path TO b_schema; SET TIME ZONE 'America/New_York'").await.unwrap();
        for _ in 0..100 {
            assert_eq!(one(&a, "SELECT v || ' ' || current_setting('TimeZone') FROM t").await, "a Asia/Tokyo");
            assert_eq!(one(&b, "SELECT v || ' ' || current_setting('TimeZone') FROM t").await, "b America/New_York");
            assert_eq!(one(&fresh, "SHOW search_path").await, "\"$user\", public");
        }
        // Extended protocol sees the same settings.
        let row = a.query_one("SELECT v FROM t WHERE $1::int = 1", &[&1i32]).await.unwrap();
        assert_eq!(row.get::<_, &str>(0), "a");

        // A SET in a rolled-back transaction does not stick; in a committed one it does.
        a.batch_execute("BEGIN; SET search_path = b_schema; ROLLBACK").await.unwrap();
        assert_eq!(one(&a, "SELECT v FROM t").await, "a");
        a.batch_execute("BEGIN; SET search_path = b_schema; SELECT 1/0").await.unwrap_err();
        a.batch_execute("ROLLBACK").await.unwrap();
        assert_eq!(one(&a, "SELECT v FROM t").await, "a");
        assert_eq!(one(&b, "SELECT v FROM t").await, "b");
        // SET LOCAL is transaction-scoped.
        b.batch_execute("BEGIN; SET LOCAL search_path = a_schema; COMMIT").await.unwrap();
        assert_eq!(one(&b, "SELECT v FROM t").await, "b");

        // set_config(..., false) from a SELECT is tracked like SET (pg_dump does this).
        assert_eq!(one(&b, "SELECT pg_catalog.set_config('search_path', 'a_schema', false)").await, "a_schema");
        assert_eq!(one(&b, "SELECT v FROM t").await, "a");
        assert_eq!(one(&fresh, "SHOW search_path").await, "\"$user\", public");

        // SET ROLE follows the client; RESET ALL leaves it, RESET ROLE ends it.
        a.batch_execute("SET ROLE reader").await.unwrap();
        assert_eq!(one(&a, "SELECT current_user").await, "reader");
        assert_eq!(one(&fresh, "SELECT current_user").await, USER);
        a.batch_execute("RESET ALL").await.unwrap();
        assert_eq!(
            one(&a, "SELECT current_user || ' ' || current_setting('search_path')").await,
            "reader \"$user\", public"
        );
        a.batch_execute("RESET ROLE").await.unwrap();
        assert_eq!(one(&a, "SELECT current_user").await, USER);
        assert_eq!(
            one(&b, "SELECT current_user || ' ' || current_setting('TimeZone')").await,
            format!("{USER} America/New_York")
        );
    });
}

#[test]
fn startup_options_apply_in_transaction_mode() {
    let cluster = shared_cluster();
    cluster.create_database("startup_opts");
    let p = ProxyProcess::start(cluster, ProxyOptions { pool_size: 1, ..Default::default() });
    let out = std::process::Command::new(pg_bin("psql"))
        .args(["-X", "-At", "-h", "127.0.0.1", "-p", &p.port.to_string(), "-U", USER, "-d", "startup_opts"])
        .args(["-c", "SHOW search_path", "-c", "SHOW application_name", "-c", "SHOW statement_timeout"])
        .env("PGPASSWORD", PASSWORD)
        .env("PGOPTIONS", "-c search_path=from_options -c statement_timeout=9s")
        .env("PGAPPNAME", "startup-app")
        .output()
        .unwrap();
    assert_eq!(ok(out), "from_options\nstartup-app\n9s\n");
    assert_eq!(
        ok(p.psql("startup_opts", &["-c", "SHOW search_path", "-c", "SHOW statement_timeout"], None)),
        "\"$user\", public\n0\n"
    );
}

#[test]
fn listen_pins_the_client_to_its_connection_until_unlisten() {
    let cluster = shared_cluster();
    cluster.create_database("pins");
    let p = ProxyProcess::start(cluster, ProxyOptions { pool_size: 2, ..Default::default() });
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (listener, mut conn) = tokio_postgres::connect(&p.conn_str("pins"), NoTls).await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(message) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                if let Ok(tokio_postgres::AsyncMessage::Notification(n)) = message {
                    let _ = tx.send(n.payload().to_string());
                }
            }
        });
        let pid = one(&listener, "LISTEN events; SELECT pg_backend_pid()").await;
        let notifier = connect(&p, "pins").await;
        for i in 0..20 {
            notifier.batch_execute(&format!("NOTIFY events, 'n{i}'")).await.unwrap();
            let got = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv()).await.expect("notification");
            assert_eq!(got.as_deref(), Some(format!("n{i}").as_str()));
            assert_eq!(one(&listener, "SELECT pg_backend_pid()").await, pid, "pinned to one backend");
        }
        listener.batch_execute("UNLISTEN *").await.unwrap();
    });
    assert!(p.metrics().contains("pgcausal_session_pins_total{kind=\"listen\"} 1"), "{}", p.metrics());
}

#[test]
fn asyncpg_runs_a_thousand_transactions() {
    let cluster = shared_cluster();
    cluster.create_database("asyncpg_db");
    let p = ProxyProcess::start(cluster, ProxyOptions { pool_size: 2, ..Default::default() });
    let dsn = format!("postgresql://{USER}:{PASSWORD}@127.0.0.1:{}/asyncpg_db", p.port);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/drivers/asyncpg_loop.py");
    let out = std::process::Command::new("python3").arg(script).arg(&dsn).output().expect("python3 runs");
    let text = ok(out);
    assert!(text.contains("asyncpg ok: 1000 transactions"), "{text}");
}
