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
    assert!(metrics.contains("pgcausal_state_replay_failures_total{kind=\"settings\"} 1"), "{metrics}");
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

#[test]
fn sql_level_prepared_statements_exist_wherever_the_client_runs() {
    let cluster = shared_cluster();
    cluster.create_database("sql_prepared_nested");
    cluster.sql(0, "sql_prepared_nested", "CREATE TABLE src AS SELECT g AS n FROM generate_series(1, 3) g");
    // Two connections, and a second client keeping one busy in between: units move.
    let p = ProxyProcess::start(cluster, ProxyOptions { pool_size: 2, ..Default::default() });
    p.wait_for_followers();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let a = connect(&p, "sql_prepared_nested").await;
        let other = connect(&p, "sql_prepared_nested").await;
        a.batch_execute("PREPARE q AS SELECT n FROM src WHERE n >= 2").await.unwrap();
        other.batch_execute("PREPARE q AS SELECT 'other'").await.unwrap();
        for i in 0..10 {
            // Uses the proxy does not parse: CREATE TABLE AS EXECUTE, EXPLAIN EXECUTE, EXECUTE in PL/pgSQL.
            a.batch_execute(&format!("CREATE TABLE copy{i} AS EXECUTE q")).await.unwrap();
            assert_eq!(one(&a, &format!("SELECT count(*) FROM copy{i}")).await, "2");
            assert!(one(&a, "EXPLAIN EXECUTE q").await.contains("src"));
            let nested = "DO $$ DECLARE c int; BEGIN EXECUTE 'CREATE TABLE nested AS EXECUTE q'; \
                          SELECT count(*) INTO c FROM nested; DROP TABLE nested; \
                          IF c <> 2 THEN RAISE 'got %', c; END IF; END $$";
            a.batch_execute(nested).await.unwrap();
            // Exactly the client's own query string, as PostgreSQL records it (no proxy text).
            let text = one(&a, "SELECT statement FROM pg_prepared_statements WHERE name = 'q'").await;
            assert_eq!(text, "PREPARE q AS SELECT n FROM src WHERE n >= 2");
            let leaked = "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE '%''other''%'";
            assert_eq!(one(&a, leaked).await, "0", "another client's SQL is never listed");
            assert_eq!(one(&other, "EXECUTE q").await, "other");
        }
        // A statement whose table went away: the EXECUTE gets exactly one error, PostgreSQL's.
        a.batch_execute("PREPARE gone AS SELECT * FROM src").await.unwrap();
        other.batch_execute("DROP TABLE src CASCADE").await.unwrap();
        let messages = a.simple_query("EXECUTE gone").await;
        let e = messages.expect_err("the table is gone");
        assert_eq!(e.code().map(|c| c.code()), Some("42P01"), "{}", pg_error(&e));
        assert_eq!(one(&a, "SELECT 1").await, "1", "the client carries on");
    });
}

#[test]
fn lastval_and_currval_never_show_another_clients_value() {
    let cluster = shared_cluster();
    cluster.create_database("sequences");
    cluster.sql(0, "sequences", "CREATE SEQUENCE s; CREATE TABLE t (id serial, v text)");
    let p = ProxyProcess::start(cluster, ProxyOptions { pool_size: 2, ..Default::default() });
    p.wait_for_followers();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let a = connect(&p, "sequences").await;
        let b = connect(&p, "sequences").await;
        // A never called nextval: its lastval/currval must fail, whatever B left on a backend.
        let mut errors = 0;
        for _ in 0..20 {
            let b_value = one(&b, "SELECT nextval('s')").await;
            assert_ne!(b_value, "");
            let e = a.simple_query("SELECT lastval()").await.expect_err("A has no lastval");
            assert_eq!(e.code().map(|c| c.code()), Some("55000"), "{}", pg_error(&e));
            let e = a.simple_query("SELECT currval('s')").await.expect_err("A has no currval");
            assert_eq!(e.code().map(|c| c.code()), Some("55000"), "{}", pg_error(&e));
            errors += 2;
        }
        assert_eq!(errors, 40);
        // After its own INSERT (nextval by default), A's currval in the next transaction runs
        // where that INSERT ran, and is its own.
        for _ in 0..20 {
            let id = one(&a, "INSERT INTO t (v) VALUES ('a') RETURNING id").await;
            assert_eq!(one(&a, "SELECT currval('t_id_seq')").await, id);
            assert_eq!(one(&a, "SELECT lastval()").await, id);
        }
        // With B's INSERTs in between (on the backend A's ran on), A gets its own value or
        // "not yet defined", never B's.
        let (mut own, mut undefined) = (0, 0);
        for _ in 0..20 {
            let id = one(&a, "INSERT INTO t (v) VALUES ('a') RETURNING id").await;
            let b_id = one(&b, "INSERT INTO t (v) VALUES ('b') RETURNING id").await;
            match a.simple_query("SELECT currval('t_id_seq')").await {
                Ok(m) => {
                    // tokio-postgres sends RowDescription before the rows: take the first row.
                    let got = m
                        .iter()
                        .find_map(|m| match m {
                            SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap().to_string()),
                            _ => None,
                        })
                        .expect("currval answered without a row");
                    assert_eq!(got, id, "A's own value (B's was {b_id})");
                    own += 1;
                }
                Err(e) => {
                    assert_eq!(e.code().map(|c| c.code()), Some("55000"), "{}", pg_error(&e));
                    undefined += 1;
                }
            }
        }
        assert_eq!(own + undefined, 20);
        // Reading a sequence relation runs on the leader: the follower shows it pre-logged.
        one(&a, "SELECT nextval('s')").await;
        let leader = cluster.sql(0, "sequences", "SELECT last_value || ' ' || is_called FROM s");
        assert_eq!(one(&a, "SELECT last_value || ' ' || is_called FROM s").await, leader.trim_end());
    });
}

#[test]
fn temp_objects_pin_in_every_form() {
    let cluster = shared_cluster();
    cluster.create_database("temp_forms");
    let p = ProxyProcess::start(cluster, ProxyOptions { pool_size: 2, ..Default::default() });
    p.wait_for_followers();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let forms = [
            ("BEGIN; CREATE TEMP TABLE x AS SELECT 1 AS n; COMMIT", "SELECT n FROM x"),
            ("CREATE TEMPORARY VIEW x AS SELECT * FROM ROWS FROM (generate_series(1, 1)) AS g(n)", "SELECT n FROM x"),
            ("CREATE TEMP TABLE x WITH (toast.vacuum_truncate = false) AS SELECT 1 AS n", "SELECT n FROM x"),
            ("CREATE TABLE pg_temp.x AS SELECT 1 AS n", "SELECT n FROM x"),
            ("CREATE FUNCTION pg_temp.x() RETURNS int LANGUAGE sql AS 'SELECT 1'", "SELECT pg_temp.x()"),
            ("DO $$ BEGIN CREATE TEMP TABLE x AS SELECT 1 AS n; END $$", "SELECT n FROM x"),
            (
                "CREATE TABLE IF NOT EXISTS ab (a int, b int); CREATE STATISTICS pg_temp.x ON a, b FROM ab",
                "SELECT count(*) FROM pg_statistic_ext WHERE stxname = 'x' AND pg_statistics_obj_is_visible(oid) IS NOT NULL AND stxnamespace = pg_my_temp_schema()",
            ),
        ];
        for (create, read) in forms {
            let c = connect(&p, "temp_forms").await;
            let busy = connect(&p, "temp_forms").await;
            c.batch_execute(create).await.unwrap_or_else(|e| panic!("{create}: {}", pg_error(&e)));
            let pid = one(&c, "SELECT pg_backend_pid()").await;
            for _ in 0..5 {
                // Another client works meanwhile; c keeps its backend and sees its object.
                one(&busy, "SELECT 1").await;
                assert_eq!(one(&c, read).await, "1", "{create}");
                assert_eq!(one(&c, "SELECT pg_backend_pid()").await, pid, "{create}: pinned");
            }
        }
        // Dropped again as pg_temp.name: the pin ends, and no other client ever sees the object.
        let c = connect(&p, "temp_forms").await;
        c.batch_execute("CREATE TEMP TABLE y (n int)").await.unwrap();
        c.batch_execute("DROP TABLE pg_temp.y").await.unwrap();
        let others: Vec<Client> = futures_join(&p, 3).await;
        for o in &others {
            assert_eq!(one(o, "SELECT count(*) FROM pg_class WHERE relname = 'y' AND relpersistence = 't'").await, "0");
        }
    });
    assert!(metric_sum(&p.metrics(), "pgcausal_session_pins_total{kind=\"temp_objects\"}") >= 1.0, "{}", p.metrics());
}

async fn futures_join(p: &ProxyProcess, n: usize) -> Vec<Client> {
    let mut clients = Vec::new();
    for _ in 0..n {
        clients.push(connect(p, "temp_forms").await);
    }
    clients
}

#[test]
fn psql_gdesc_describes_the_unnamed_statement_after_a_sync() {
    let cluster = shared_cluster();
    cluster.create_database("gdesc");
    let p = ProxyProcess::start(cluster, ProxyOptions { pool_size: 2, ..Default::default() });
    let out = ok(p.psql("gdesc", &[], Some("SELECT 1 AS one, 'x'::text AS two \\gdesc\n")));
    assert_eq!(out, "one|integer\ntwo|text\n");
}
