//! psql through the proxy: DDL, DML, \d, transactions, errors, COPY, cancel, NOTICE, auth methods, SCRAM verifiers.

mod support;
use std::time::{Duration, Instant};
use support::*;

fn proxy(db: &str, options: ProxyOptions) -> ProxyProcess {
    let cluster = shared_cluster();
    cluster.create_database(db);
    ProxyProcess::start(cluster, options)
}

#[test]
fn ddl_dml_and_describe() {
    let p = proxy("psql_ddl", ProxyOptions::default());
    let out = ok(p.psql(
        "psql_ddl",
        &[
            "-c",
            "CREATE TABLE items (id int primary key, name text not null)",
            "-c",
            "INSERT INTO items VALUES (1, 'one'), (2, 'two'), (3, 'three')",
            "-c",
            "UPDATE items SET name = 'TWO' WHERE id = 2",
            "-c",
            "DELETE FROM items WHERE id = 3",
            "-c",
            "SELECT id, name FROM items ORDER BY id",
            "-c",
            "\\d items",
        ],
        None,
    ));
    assert!(out.contains("1|one\n2|TWO\n"), "{out}");
    assert!(!out.contains("three"), "{out}");
    assert!(out.contains("id|integer") && out.contains("name|text"), "\\d output: {out}");
}

#[test]
fn transactions_commit_and_roll_back_after_an_error() {
    let p = proxy("psql_tx", ProxyOptions::default());
    ok(p.psql("psql_tx", &["-c", "CREATE TABLE t (v int)"], None));
    let script = "BEGIN;\nINSERT INTO t VALUES (1);\nINSERT INTO t VALUES (2);\nCOMMIT;\n\
                  BEGIN;\nINSERT INTO t VALUES (3);\nSELECT 1/0;\nSELECT 'after error';\nROLLBACK;\n\
                  SELECT string_agg(v::text, ',' ORDER BY v) FROM t;\n";
    let out = p.psql("psql_tx", &["-v", "ON_ERROR_STOP=0"], Some(script));
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(stderr.contains("division by zero"), "{stderr}");
    assert!(stderr.contains("current transaction is aborted"), "{stderr}");
    assert!(stdout.trim_end().ends_with("1,2"), "rolled back row must be gone: {stdout}");
}

#[test]
fn copy_in_and_out_round_trip_a_large_table() {
    let p = proxy("psql_copy", ProxyOptions::default());
    ok(p.psql("psql_copy", &["-c", "CREATE TABLE c (id int, payload text)"], None));
    let rows = 50_000;
    let input: String = (0..rows).map(|i| format!("{i}\tpayload number {i} {}\n", "x".repeat(i % 50))).collect();
    let out = ok(p.psql("psql_copy", &["-c", "COPY c FROM STDIN"], Some(&input)));
    assert_eq!(out.trim(), format!("COPY {rows}"));
    let copied = ok(p.psql("psql_copy", &["-c", "COPY (SELECT * FROM c ORDER BY id) TO STDOUT"], None));
    assert_eq!(copied, input);
    // COPY FROM STDIN that the server rejects midway leaves the connection usable.
    let bad = p.psql(
        "psql_copy",
        &["-v", "ON_ERROR_STOP=0", "-c", "COPY c FROM STDIN", "-c", "SELECT count(*) FROM c"],
        Some("1\tok\nnot-a-number\tbad\n"),
    );
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("invalid input syntax for type integer"), "{stderr}");
    assert!(String::from_utf8_lossy(&bad.stdout).contains(&rows.to_string()));
}

#[test]
fn notice_and_empty_query_pass_through() {
    let p = proxy("psql_notice", ProxyOptions::default());
    let out = p.psql(
        "psql_notice",
        &["-c", "DO $$ BEGIN RAISE NOTICE 'hello from the server'; END $$", "-c", ";", "-c", "SELECT 'still here'"],
        None,
    );
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NOTICE:  hello from the server"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("still here"));
}

#[test]
fn psql_cancel_reaches_the_server_running_the_query() {
    let cluster = shared_cluster();
    let p = proxy("psql_cancel", ProxyOptions::default());
    let child = std::process::Command::new(pg_bin("psql"))
        .args([
            "-X",
            "-h",
            "127.0.0.1",
            "-p",
            &p.port.to_string(),
            "-U",
            USER,
            "-d",
            "psql_cancel",
            "-c",
            "SELECT pg_sleep(60)",
        ])
        .env("PGPASSWORD", PASSWORD)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the sleep is really running on the leader before cancelling.
    let deadline = Instant::now() + Duration::from_secs(20);
    // A read: it runs on whichever node the router picked.
    let running = || {
        (0..cluster.ports.len()).any(|i| {
            cluster.sql(
                i,
                "postgres",
                "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)' AND state = 'active'",
            ) == "1"
        })
    };
    while !running() {
        assert!(Instant::now() < deadline, "query never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let started = Instant::now();
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("canceling statement due to user request"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(p.metrics().contains("pgcausal_cancel_requests_total{result=\"forwarded\"} 1"), "{}", p.metrics());
}

#[test]
fn md5_and_trust_users_log_in_and_wrong_passwords_do_not() {
    let p = proxy("psql_auth", ProxyOptions::default());
    let out = ok(p.psql_as(MD5_USER, MD5_PASSWORD, "psql_auth", &["-c", "SELECT current_user"], None));
    assert_eq!(out.trim(), MD5_USER);
    let out = ok(p.psql_as(TRUST_USER, "anything", "psql_auth", &["-c", "SELECT current_user"], None));
    assert_eq!(out.trim(), TRUST_USER);
    for (user, password) in [(USER, "wrong"), (MD5_USER, "wrong"), ("nobody", "x")] {
        let out = p.psql_as(user, password, "psql_auth", &["-c", "SELECT 1"], None);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&format!("password authentication failed for user \"{user}\"")), "{stderr}");
    }
    let out = p.psql("no_such_database", &["-c", "SELECT 1"], None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("database \"no_such_database\" does not exist"));
}

#[test]
fn session_mode_applies_startup_parameters() {
    let p = proxy("psql_session", ProxyOptions { pool_mode: "session", ..Default::default() });
    let out = std::process::Command::new(pg_bin("psql"))
        .args(["-X", "-At", "-h", "127.0.0.1", "-p", &p.port.to_string(), "-U", USER, "-d", "psql_session"])
        .args([
            "-c",
            "SHOW search_path",
            "-c",
            "SHOW application_name",
            "-c",
            "SET statement_timeout = '7s'",
            "-c",
            "SHOW statement_timeout",
        ])
        .env("PGPASSWORD", PASSWORD)
        .env("PGOPTIONS", "-c search_path=custom_path")
        .env("PGAPPNAME", "my-app")
        .output()
        .unwrap();
    assert_eq!(ok(out), "custom_path\nmy-app\nSET\n7s\n");
    // The next client on the same (reset) server connection sees none of it.
    let out = ok(p.psql("psql_session", &["-c", "SHOW search_path", "-c", "SHOW statement_timeout"], None));
    assert_eq!(out, "\"$user\", public\n0\n");
}

#[test]
fn metrics_count_clients_queries_and_errors() {
    let p = proxy("psql_metrics", ProxyOptions::default());
    let _ = p.psql("psql_metrics", &["-c", "SELECT 1", "-c", "SELECT 1/0"], None);
    let m = p.metrics();
    let value = |name: &str| -> f64 {
        m.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let queries: f64 = (0..3).map(|i| value(&format!("pgcausal_queries_total{{node=\"node{i}\"}}"))).sum();
    assert!(queries >= 2.0, "{m}");
    assert!(value("pgcausal_errors_total{class=\"22\",source=\"server\"}") >= 1.0, "{m}");
    assert!(value("pgcausal_node_up{node=\"node1\"}") == 1.0, "{m}");
    assert!(value("pgcausal_node_is_leader{node=\"node0\"}") == 1.0, "{m}");
    assert!(m.contains("pgcausal_server_connections{node=\"node0\"}"), "{m}");
}

/// The SQLSTATE and message a login through the proxy gets, via tokio-postgres.
fn login_error(p: &ProxyProcess, user: &str, password: &str, db: &str) -> String {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let conn_str = format!("host=127.0.0.1 port={} user={user} password={password} dbname={db}", p.port);
    match rt.block_on(tokio_postgres::connect(&conn_str, tokio_postgres::NoTls)) {
        Ok(_) => "logged in".into(),
        Err(e) => pg_error(&e),
    }
}

#[test]
fn scram_verifiers_in_the_config_log_in_the_right_password_only() {
    let cluster = shared_cluster();
    let db = "psql_verifier";
    cluster.create_database(db);
    // Passthrough: the config holds pg_authid's own verifier. server_password: the config holds
    // a verifier pgcausal made (another salt). Mismatch: another salt and no server_password.
    for (role, password) in [("vpass", "pass-pw"), ("vserver", "server-pw"), ("vmismatch", "mismatch-pw")] {
        cluster.sql(0, "postgres", &format!("DROP ROLE IF EXISTS {role}"));
        cluster.sql(0, "postgres", &format!("CREATE ROLE {role} LOGIN PASSWORD '{password}'"));
    }
    cluster.sql(0, "postgres", &format!("ALTER DATABASE {db} OWNER TO vpass"));
    let authid = cluster.sql(0, "postgres", "SELECT rolpassword FROM pg_authid WHERE rolname = 'vpass'");
    let authid = authid.trim();
    assert!(authid.starts_with("SCRAM-SHA-256$4096:"), "{authid}");
    let ours = |password: &str| pgcausal::secret::ScramVerifier::generate(password).to_string();
    let extra = format!(
        "[[users]]\nname = \"vpass\"\npassword = \"{authid}\"\n\
         [[users]]\nname = \"vserver\"\npassword = \"{}\"\nserver_password = \"server-pw\"\n\
         [[users]]\nname = \"vmismatch\"\npassword = \"{}\"\n",
        ours("server-pw"),
        ours("mismatch-pw")
    );
    let p = ProxyProcess::start(cluster, ProxyOptions { extra, ..ProxyOptions::default() });

    let sql = "CREATE TABLE IF NOT EXISTS t (x int); INSERT INTO t VALUES (1); SELECT current_user, count(*) FROM t";
    let out = ok(p.psql_as("vpass", "pass-pw", db, &["-c", sql], None));
    assert_eq!(out.trim().lines().last(), Some("vpass|1"), "{out}");
    // New sessions: reads on the followers, whose pools log in with the session's ClientKey.
    let read = "SELECT current_user, count(*), pg_is_in_recovery() FROM t";
    let answers: Vec<String> =
        (0..3).map(|_| ok(p.psql_as("vpass", "pass-pw", db, &["-c", read], None)).trim().to_string()).collect();
    assert!(answers.iter().all(|a| a.starts_with("vpass|1|")), "{answers:?}");
    assert!(answers.iter().any(|a| a == "vpass|1|t"), "a follower served a read: {answers:?}");
    let out = ok(p.psql_as("vserver", "server-pw", db, &["-c", "SELECT current_user"], None));
    assert_eq!(out.trim(), "vserver");

    for user in ["vpass", "vserver", "vmismatch"] {
        assert_eq!(
            login_error(&p, user, "wrong", db),
            format!("FATAL 28P01: password authentication failed for user \"{user}\"")
        );
    }
    assert_eq!(
        login_error(&p, "nobody", "wrong", db),
        "FATAL 28P01: password authentication failed for user \"nobody\"",
        "an unknown user fails like a wrong password"
    );

    let out = p.psql_as("vmismatch", "mismatch-pw", db, &["-c", "SELECT 1"], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("another salt") && stderr.contains("pg_authid.rolpassword"), "{stderr}");
    assert!(!p.log().contains("pass-pw") && !p.log().contains(authid), "no secret in the log");
}

#[test]
fn auth_query_users_log_in_and_unknown_users_fail_like_wrong_passwords() {
    let cluster = shared_cluster();
    let db = "psql_auth_query";
    cluster.create_database(db);
    cluster.sql(0, "postgres", "DROP ROLE IF EXISTS aq_user");
    cluster.sql(0, "postgres", "CREATE ROLE aq_user LOGIN PASSWORD 'aq-pw'");
    cluster.sql(0, "postgres", &format!("ALTER DATABASE {db} OWNER TO aq_user"));
    cluster.cluster.lock().unwrap().wait_replicated(std::time::Duration::from_secs(30)).expect("replicated");
    let extra = "[auth]\nquery = \"SELECT usename, passwd FROM pg_shadow WHERE usename = $1\"\ncache_ttl = \"5s\"\n";
    let p = ProxyProcess::start(cluster, ProxyOptions { extra: extra.into(), ..ProxyOptions::default() });

    // Not in [[users]]: its verifier comes from the leader, and the servers take its ClientKey.
    let write = "CREATE TABLE IF NOT EXISTS t (x int); INSERT INTO t VALUES (1); SELECT current_user, count(*) FROM t";
    let out = ok(p.psql_as("aq_user", "aq-pw", db, &["-c", write], None));
    assert_eq!(out.trim().lines().last(), Some("aq_user|1"), "{out}");
    let read = "SELECT current_user, pg_is_in_recovery()";
    let answers: Vec<String> =
        (0..3).map(|_| ok(p.psql_as("aq_user", "aq-pw", db, &["-c", read], None)).trim().to_string()).collect();
    assert!(answers.iter().any(|a| a == "aq_user|t"), "a follower served it: {answers:?}");

    // A wrong password and an unknown user: the same exchange, the same error.
    assert_eq!(
        login_error(&p, "aq_user", "wrong", db),
        "FATAL 28P01: password authentication failed for user \"aq_user\""
    );
    assert_eq!(
        login_error(&p, "aq_nobody", "wrong", db),
        "FATAL 28P01: password authentication failed for user \"aq_nobody\""
    );
    // A role without a password has no secret to check: refused the same way.
    cluster.sql(0, "postgres", "DROP ROLE IF EXISTS aq_nopass");
    cluster.sql(0, "postgres", "CREATE ROLE aq_nopass LOGIN");
    assert_eq!(
        login_error(&p, "aq_nopass", "", db),
        "FATAL 28P01: password authentication failed for user \"aq_nopass\""
    );
    assert!(!p.log().contains("aq-pw") && !p.log().contains("SCRAM-SHA-256$"), "no secret in the log");
}
