//! Transaction pooling never mixes clients: a client's statement runs only in its own identity
//! and settings, replay failures are errors (never a statement run anyway), RESET returns the
//! startup value, SQL-level prepared statements and the unnamed statement follow the client, and
//! node-local state (sequences, temp objects) never leaks between clients.

mod support;
use support::*;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

async fn connect(p: &ProxyProcess, db: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(&p.conn_str(db), NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

/// The first column of every row the query string returned.
async fn rows(c: &Client, sql: &str) -> Vec<String> {
    let messages = c.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {}", pg_error(&e)));
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("NULL").to_string()),
            _ => None,
        })
        .collect()
}

async fn one(c: &Client, sql: &str) -> String {
    rows(c, sql).await.into_iter().next().unwrap_or_else(|| panic!("{sql}: no row"))
}

const WHO: &str = "SELECT current_user || ' ' || session_user || ' ' || current_setting('search_path')";

#[test]
fn no_statement_runs_under_another_clients_role_or_search_path() {
    let cluster = shared_cluster();
    cluster.create_database("identity");
    cluster.sql(
        0,
        "identity",
        "CREATE ROLE ra; CREATE ROLE rb; CREATE ROLE rc; CREATE ROLE low; GRANT rb TO ra; \
         CREATE SCHEMA private; GRANT USAGE ON SCHEMA private TO low; \
         CREATE TABLE private.secret AS SELECT 'secret'::text AS v; GRANT SELECT ON private.secret TO low; \
         CREATE TABLE public.secret AS SELECT 'public'::text AS v; GRANT SELECT ON public.secret TO PUBLIC",
    );
    // One server connection: both clients' statements run on the same backend, in turn.
    let p = ProxyProcess::start(cluster, ProxyOptions { pool_size: 1, ..Default::default() });
    p.wait_for_followers();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let x = connect(&p, "identity").await;
        let y = connect(&p, "identity").await;
        // The reproduction: X's role ends with its own SESSION AUTHORIZATION.
        x.batch_execute("SET SESSION AUTHORIZATION ra; SET ROLE rb; SET SESSION AUTHORIZATION rc").await.unwrap();
        y.batch_execute("SET SESSION AUTHORIZATION low; SET search_path = private").await.unwrap();
        let x_is = "rc rc \"$user\", public";
        let y_is = "low low private";
        let mut checked = 0;
        for _ in 0..100 {
            assert_eq!(rows(&x, &format!("{WHO}; SELECT v FROM secret")).await, [x_is, "public"]);
            assert_eq!(rows(&y, &format!("{WHO}; SELECT v FROM secret")).await, [y_is, "secret"]);
            // Extended protocol too (tokio-postgres prepares unnamed statements).
            let row = x.query_one(WHO, &[]).await.unwrap();
            assert_eq!(row.get::<_, &str>(0), x_is);
            checked += 3;
        }
        assert_eq!(checked, 300);
        // RESET SESSION AUTHORIZATION returns to the login user, role included.
        x.batch_execute("SET SESSION AUTHORIZATION ra; SET ROLE rb").await.unwrap();
        assert_eq!(one(&x, "SELECT current_user").await, "rb");
        x.batch_execute("RESET SESSION AUTHORIZATION").await.unwrap();
        assert_eq!(one(&y, WHO).await, y_is);
        assert_eq!(one(&x, WHO).await, format!("{USER} {USER} \"$user\", public"));
        // DISCARD ALL is a fresh session: login identity and defaults.
        y.batch_execute("DISCARD ALL").await.unwrap();
        assert_eq!(one(&y, WHO).await, format!("{USER} {USER} \"$user\", public"));
    });
}

#[test]
fn a_failed_replay_fails_the_statement_and_never_runs_it() {
    let cluster = shared_cluster();
    cluster.create_database("replay_fail");
    cluster.sql(
        0,
        "replay_fail",
        "CREATE ROLE doomed; CREATE TABLE public.log (who text); GRANT INSERT ON public.log TO doomed",
    );
    let p = ProxyProcess::start(cluster, ProxyOptions { pool_size: 1, ..Default::default() });
    p.wait_for_followers();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let x = connect(&p, "replay_fail").await;
        let other = connect(&p, "replay_fail").await;
        x.batch_execute("SET ROLE doomed").await.unwrap();
        // Another client takes the connection (X's role is undone there), then the role goes.
        other.batch_execute("DROP ROLE doomed").await.unwrap_err(); // owned privileges: revoke first
        other.batch_execute("REVOKE ALL ON public.log FROM doomed; DROP ROLE doomed").await.unwrap();
        // X's replay of SET ROLE doomed fails: its INSERT must not run, under any identity.
        let messages = x.simple_query("INSERT INTO public.log SELECT current_user").await;
        let e = messages.expect_err("the replay failed");
        assert_eq!(e.code().map(|c| c.code()), Some("22023"), "{}", pg_error(&e)); // role does not exist, as SET ROLE says
        assert!(pg_error(&e).contains("could not restore this session's settings"), "{}", pg_error(&e));
        assert_eq!(one(&other, "SELECT count(*) FROM public.log").await, "0", "the statement never ran");
        assert_eq!(one(&other, "SELECT current_user").await, USER);
    });
    let metrics = p.metrics();
    assert!(metrics.contains("pgcausal_state_replay_failures_total 1"), "{metrics}");
}

#[test]
fn reset_returns_the_startup_value() {
    let cluster = shared_cluster();
    cluster.create_database("startup_reset");
    let p = ProxyProcess::start(cluster, ProxyOptions { pool_size: 1, ..Default::default() });
    let out = std::process::Command::new(pg_bin("psql"))
        .args(["-X", "-qAt", "-h", "127.0.0.1", "-p", &p.port.to_string(), "-U", USER, "-d", "startup_reset"])
        .args(["-c", "SET DateStyle = ISO", "-c", "SHOW DateStyle", "-c", "RESET DateStyle", "-c", "SHOW DateStyle"])
        .args(["-c", "SET work_mem = '7MB'", "-c", "RESET ALL", "-c", "SHOW DateStyle", "-c", "SHOW work_mem"])
        .args(["-c", "DISCARD ALL", "-c", "SHOW DateStyle"])
        .env("PGPASSWORD", PASSWORD)
        .env("PGDATESTYLE", "Postgres, MDY")
        .output()
        .unwrap();
    assert_eq!(ok(out), "ISO, MDY\nPostgres, MDY\nPostgres, MDY\n4MB\nPostgres, MDY\n");
    // Another client on the same connection is back to the server default.
    assert_eq!(ok(p.psql("startup_reset", &["-c", "SHOW DateStyle"], None)), "ISO, MDY\n");
}
