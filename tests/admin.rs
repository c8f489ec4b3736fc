//! The admin console through psql: every command's columns and values against a known state,
//! PAUSE/RESUME, KILL, RELOAD, and graceful shutdown on SIGTERM and SHUTDOWN.

mod support;
use std::time::{Duration, Instant};
use support::*;

fn admin_proxy(cluster: &TestCluster, extra: &str) -> ProxyProcess {
    ProxyProcess::start(
        cluster,
        ProxyOptions { extra: format!("[admin]\nusers = [\"{USER}\"]\n{extra}"), ..Default::default() },
    )
}

/// The rows of a console answer as (column -> value) lookups.
fn column<'a>(table: &'a [Vec<String>], row: &'a [String], name: &str) -> &'a str {
    let i = table[0].iter().position(|c| c == name).unwrap_or_else(|| panic!("no column {name} in {:?}", table[0]));
    &row[i]
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn every_show_command_answers_a_table_matching_the_state() {
    let cluster = shared_cluster();
    cluster.create_database("admin_show");
    let p = admin_proxy(cluster, "");
    p.wait_for_followers();
    let followers_before: u64 = follower_units(&p.admin("SHOW NODES"));

    let nodes = p.admin("SHOW NODES");
    assert_eq!(
        nodes[0],
        [
            "name",
            "host",
            "port",
            "role",
            "timeline",
            "up",
            "in_rotation",
            "why_not",
            "wal_position",
            "lag_bytes",
            "lag_seconds",
            "incarnation",
            "fenced",
            "streams_from",
            "failover_phase",
            "epoch",
            "priority",
            "sync_state",
            "server_connections",
            "units_routed"
        ]
    );
    assert_eq!(nodes.len(), 4, "a header and three nodes: {nodes:?}");
    let roles: Vec<&str> = nodes[1..].iter().map(|r| column(&nodes, r, "role")).collect();
    assert_eq!(roles, ["leader", "follower", "follower"]);
    for row in &nodes[1..] {
        assert_eq!(column(&nodes, row, "up"), "true");
        assert_eq!(column(&nodes, row, "in_rotation"), "true");
        assert!(column(&nodes, row, "wal_position").contains('/'), "{row:?}");
        assert_eq!(column(&nodes, row, "fenced"), "false");
        assert_eq!(column(&nodes, row, "failover_phase"), "healthy");
        assert_eq!(column(&nodes, row, "epoch"), "1", "one leader seen since start");
    }
    let streams: Vec<&str> = nodes[1..].iter().map(|r| column(&nodes, r, "streams_from")).collect();
    assert_eq!(streams, ["", "node0", "node0"], "followers name the leader they stream from");
    let failovers = p.admin("SHOW FAILOVERS");
    assert_eq!(failovers[0][..5], ["id", "kind", "started", "ended", "result"]);
    assert_eq!(failovers.len(), 1, "no failover happened: {failovers:?}");
    let promote = p.admin_as(USER, PASSWORD, "PROMOTE node1").unwrap_err();
    assert!(promote.contains("the leader is up"), "PROMOTE refused while the leader lives: {promote}");

    // Ten reads in one session: all of them on followers.
    let reads = "SELECT 1;\n".repeat(10);
    ok(p.psql("admin_show", &[], Some(&reads)));
    let followers_after = follower_units(&p.admin("SHOW NODES"));
    assert_eq!(followers_after - followers_before, 10, "ten read units on followers");

    let pools = p.admin("SHOW POOLS");
    assert_eq!(
        pools[0],
        ["node", "database", "user", "active", "idle", "waiting", "longest_wait_seconds", "size", "max_size"]
    );
    let pool = pools.iter().find(|r| r[1] == "admin_show" && r[2] == USER).expect("a pool for admin_show");
    assert_eq!((column(&pools, pool, "active"), column(&pools, pool, "waiting")), ("0", "0"));
    assert_eq!(column(&pools, pool, "max_size"), "4");

    let servers = p.admin("SHOW SERVERS");
    assert_eq!(servers[0], ["node", "database", "user", "state", "client", "pid", "age_seconds"]);
    assert!(servers.iter().any(|r| r[1] == "admin_show" && r[3] == "idle"), "{servers:?}");

    let clients = p.admin("SHOW CLIENTS");
    assert_eq!(
        clients[0],
        ["id", "address", "user", "database", "state", "node", "consistency", "token", "connected_since", "units"]
    );
    let me = clients.iter().find(|r| r[3] == "pgcausal").expect("the console's own session is listed");
    assert_eq!((column(&clients, me, "user"), column(&clients, me, "state")), (USER, "idle"));

    let config = p.admin("SHOW CONFIG");
    let value = |key: &str| config.iter().find(|r| r[0] == key).map(|r| r[1].clone());
    assert_eq!(value("pool.size").as_deref(), Some("4"));
    assert_eq!(value("users[0].password").as_deref(), Some("********"), "secrets are masked");

    let stats = p.admin("SHOW STATS");
    assert_eq!(stats[0], ["stat", "total", "per_second", "per_second_recent"]);
    let stat = |stats: &[Vec<String>], name: &str| -> f64 {
        stats.iter().find(|r| r[0] == name).unwrap_or_else(|| panic!("no {name} in {stats:?}"))[1].parse().unwrap()
    };
    assert!(stat(&stats, "units_on_followers") >= 10.0, "{stats:?}");
    // Bytes: one 100 kB answer to a 45-byte query, counted once the session ends.
    let big = "SELECT repeat('x', 100000) AS a_hundred_kb;";
    ok(p.psql("admin_show", &["-c", big], None));
    let after = p.admin("SHOW STATS");
    let sent = stat(&after, "bytes_sent") - stat(&stats, "bytes_sent");
    let received = stat(&after, "bytes_received") - stat(&stats, "bytes_received");
    assert!((100_000.0..110_000.0).contains(&sent), "bytes sent for a 100 kB row: {sent}");
    assert!((big.len() as f64..2_000.0).contains(&received), "bytes received for one query: {received}");

    let states = || p.metrics().lines().filter(|l| l.starts_with("pgcausal_clients{")).count();
    wait_until("the client states gauge", Duration::from_secs(10), || states() == 3);
    assert!(p.admin("SHOW VERSION")[1][0].starts_with("pgcausal "));
    let help = p.admin("SHOW HELP");
    assert!(help.iter().any(|r| r[0] == "KILL <client id>"), "{help:?}");

    let unknown = p.admin_as(USER, PASSWORD, "SHOW TABLES").unwrap_err();
    assert!(unknown.contains("unknown command") && unknown.contains("SHOW POOLS"), "{unknown}");

    // Not an admin: refused at login, as PostgreSQL refuses a role (28000).
    let refused = p.admin_as(MD5_USER, MD5_PASSWORD, "SHOW NODES").unwrap_err();
    assert!(refused.contains("may not use the admin console"), "{refused}");
}

fn follower_units(nodes: &[Vec<String>]) -> u64 {
    nodes[1..]
        .iter()
        .filter(|r| column(nodes, r, "role") == "follower")
        .map(|r| column(nodes, r, "units_routed").parse::<u64>().unwrap())
        .sum()
}

#[test]
fn pause_holds_a_unit_until_resume_and_kill_closes_one_client() {
    let cluster = shared_cluster();
    cluster.create_database("admin_pause");
    let p = admin_proxy(cluster, "");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (client, conn) =
        rt.block_on(tokio_postgres::connect(&p.conn_str("admin_pause"), tokio_postgres::NoTls)).unwrap();
    rt.spawn(conn);
    rt.block_on(client.simple_query("SELECT 1")).unwrap();

    p.admin("PAUSE");
    let query = rt.spawn(async move {
        let rows = client.simple_query("SELECT 42").await.map(|m| simple_query_rows(&m));
        (client, rows)
    });
    // The unit waits at the gate: SHOW CLIENTS says so.
    let waiting = || {
        let clients = p.admin("SHOW CLIENTS");
        clients[1..].iter().any(|r| r[3] == "admin_pause" && r[4] == "waiting")
    };
    wait_until("the client's unit to wait", Duration::from_secs(10), waiting);
    assert!(!query.is_finished(), "a paused unit does not run");
    p.admin("RESUME");
    let (client, rows) = rt.block_on(query).unwrap();
    assert_eq!(rows.unwrap(), vec![vec![Some("42".to_string())]]);

    let clients = p.admin("SHOW CLIENTS");
    let id = clients[1..].iter().find(|r| r[3] == "admin_pause").expect("listed")[0].clone();
    p.admin(&format!("KILL {id}"));
    let after = rt.block_on(client.simple_query("SELECT 1"));
    let error = after.expect_err("a killed client's connection is closed");
    assert!(error.is_closed() || pg_error(&error).contains("57P01"), "{}", pg_error(&error));
    let gone = p.admin("SHOW CLIENTS");
    assert!(!gone[1..].iter().any(|r| r[0] == id), "{gone:?}");
    let unknown = p.admin_as(USER, PASSWORD, "KILL 999999").unwrap_err();
    assert!(unknown.contains("no client with id 999999"), "{unknown}");
}

#[test]
fn reload_applies_pool_size_and_passwords_without_dropping_a_client_in_a_transaction() {
    let cluster = shared_cluster();
    cluster.create_database("admin_reload");
    cluster.sql(0, "postgres", "DROP ROLE IF EXISTS reloader");
    cluster.sql(0, "postgres", "CREATE ROLE reloader LOGIN SUPERUSER PASSWORD 'before'");
    let user = "[[users]]\nname = \"reloader\"\npassword = \"before\"\n";
    let p = admin_proxy(cluster, user);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let conn_str = p.conn_str("admin_reload");
    let (mut client, conn) = rt.block_on(tokio_postgres::connect(&conn_str, tokio_postgres::NoTls)).unwrap();
    rt.spawn(conn);
    rt.block_on(client.simple_query("CREATE TABLE t (id int)")).unwrap();
    let tx = rt.block_on(client.transaction()).unwrap();
    rt.block_on(tx.execute("INSERT INTO t VALUES (1)", &[])).unwrap();

    // New password on the server and in the file; a larger pool.
    cluster.sql(0, "postgres", "ALTER ROLE reloader PASSWORD 'after'");
    let text = std::fs::read_to_string(&p.config_path).unwrap();
    std::fs::write(
        &p.config_path,
        text.replace("password = \"before\"", "password = \"after\"").replace("size = 4", "size = 7"),
    )
    .unwrap();
    p.admin("RELOAD");

    rt.block_on(tx.commit()).expect("the open transaction commits after the reload");
    let pools = p.admin("SHOW POOLS");
    let pool = pools.iter().find(|r| r[1] == "admin_reload").unwrap();
    assert_eq!(column(&pools, pool, "max_size"), "7");
    let config = p.admin("SHOW CONFIG");
    assert!(config.iter().any(|r| r[0] == "pool.size" && r[1] == "7"), "{config:?}");
    ok(p.psql_as("reloader", "after", "admin_reload", &["-c", "SELECT count(*) FROM t"], None));
    let old = p.psql_as("reloader", "before", "admin_reload", &["-c", "SELECT 1"], None);
    assert!(!old.status.success(), "the old password no longer logs in");

    // An invalid file: rejected whole, reported, the running config kept.
    std::fs::write(&p.config_path, "[pool]\nsize = \"many\"\n").unwrap();
    let error = p.admin_as(USER, PASSWORD, "RELOAD").unwrap_err();
    assert!(error.contains("reload failed") && error.contains("pool.size"), "{error}");
    let config = p.admin("SHOW CONFIG");
    assert!(config.iter().any(|r| r[0] == "pool.size" && r[1] == "7"), "{config:?}");
    let metrics = p.metrics();
    assert!(metrics.contains("pgcausal_config_reloads_total{result=\"error\"} 1"), "{metrics}");
    assert!(metrics.contains("pgcausal_config_reloads_total{result=\"ok\"} 1"), "{metrics}");

    // SIGHUP reloads too (it used to kill the proxy).
    std::fs::write(&p.config_path, text.replace("password = \"before\"", "password = \"after\"")).unwrap();
    p.signal(libc::SIGHUP);
    wait_until("the SIGHUP reload", Duration::from_secs(10), || {
        p.admin("SHOW CONFIG").iter().any(|r| r[0] == "pool.size" && r[1] == "4")
    });
    ok(p.psql("admin_reload", &["-c", "SELECT 1"], None));
}

#[test]
fn sigterm_lets_a_running_query_finish_then_exits_zero() {
    let cluster = shared_cluster();
    cluster.create_database("admin_stop");
    let mut p = admin_proxy(cluster, "");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (client, conn) =
        rt.block_on(tokio_postgres::connect(&p.conn_str("admin_stop"), tokio_postgres::NoTls)).unwrap();
    rt.spawn(conn);
    let (idle, idle_conn) =
        rt.block_on(tokio_postgres::connect(&p.conn_str("admin_stop"), tokio_postgres::NoTls)).unwrap();
    rt.spawn(idle_conn);
    rt.block_on(idle.simple_query("SELECT 1")).unwrap();
    let started = Instant::now();
    let sleeper = rt
        .spawn(async move { client.simple_query("SELECT pg_sleep(2), 'slept'").await.map(|m| simple_query_rows(&m)) });
    wait_until("the query to run", Duration::from_secs(10), || {
        p.admin("SHOW CLIENTS")[1..].iter().any(|r| r[3] == "admin_stop" && r[4] == "active")
    });
    p.signal(libc::SIGTERM);
    let rows = rt.block_on(sleeper).unwrap().expect("the running query gets its result");
    assert_eq!(rows[0][1].as_deref(), Some("slept"));
    let status = p.wait_exit(Duration::from_secs(10)).expect("the proxy exits once its clients are closed");
    assert!(status.success(), "exit status {status:?}");
    assert!(started.elapsed() >= Duration::from_secs(2), "not before the query finished");
    // The idle client was told why (57P01), as PostgreSQL tells it at a shutdown.
    let error = rt.block_on(idle.simple_query("SELECT 1")).expect_err("closed");
    assert!(error.is_closed() || pg_error(&error).contains("57P01"), "{}", pg_error(&error));
    assert!(p.log().contains("shutting down"), "{}", p.log());
}

#[test]
fn shutdown_from_the_console_exits_zero() {
    let cluster = shared_cluster();
    let mut p = admin_proxy(cluster, "");
    let out = p.psql_as(USER, PASSWORD, "pgcausal", &["-c", "SHUTDOWN"], None);
    assert!(out.status.success() || String::from_utf8_lossy(&out.stderr).contains("57P01"), "{out:?}");
    let status = p.wait_exit(Duration::from_secs(10)).expect("the proxy exits");
    assert!(status.success(), "exit status {status:?}");
}

/// Rows of SHOW NODES by node name.
fn node_row(p: &ProxyProcess, name: &str) -> Option<(Vec<Vec<String>>, usize)> {
    let nodes = p.admin("SHOW NODES");
    let i = nodes.iter().skip(1).position(|r| r[0] == name)? + 1;
    Some((nodes, i))
}

fn in_rotation_with_units(p: &ProxyProcess, name: &str) -> bool {
    node_row(p, name).is_some_and(|(nodes, i)| {
        column(&nodes, &nodes[i], "in_rotation") == "true"
            && column(&nodes, &nodes[i], "units_routed").parse::<u64>().unwrap_or(0) > 0
    })
}

#[test]
fn reload_adds_and_removes_nodes_and_no_client_notices() {
    let cluster = shared_cluster();
    // Its own control login and database, so its connections on a node can be counted apart
    // from the other tests' proxies.
    cluster.sql(0, "postgres", "DROP ROLE IF EXISTS members_watch");
    cluster.sql(0, "postgres", "CREATE ROLE members_watch LOGIN SUPERUSER PASSWORD 'watch'");
    cluster.create_database("admin_members");
    cluster.sql(0, "admin_members", "CREATE TABLE t (id int)");
    let ports = cluster.ports.clone();
    let p = ProxyProcess::start(
        cluster,
        ProxyOptions {
            monitor_section: "user = \"members_watch\"\npassword = \"watch\"".into(),
            extra: format!(
                "[admin]\nusers = [\"{USER}\"]\n[failover]\nuser = \"members_watch\"\npassword = \"watch\"\n"
            ),
            node_ports: Some(vec![ports[0], ports[1]]),
            ..Default::default()
        },
    );
    let node = |i: usize| format!("[[nodes]]\nname = \"node{i}\"\nhost = \"127.0.0.1\"\nport = {}\n", ports[i]);
    let base = std::fs::read_to_string(&p.config_path).unwrap();
    assert!(base.contains(&node(0)) && base.contains(&node(1)) && !base.contains(&node(2)), "{base}");
    let with_nodes = |nodes: &[usize]| {
        let mut text = base.replace(&node(0), "").replace(&node(1), "");
        nodes.iter().for_each(|&i| text += &node(i));
        text
    };
    // A client writing and reading throughout: no reload may cost it anything.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let conn_str = p.conn_str("admin_members");
    let workload = rt.spawn({
        let stop = stop.clone();
        async move {
            let (client, conn) = tokio_postgres::connect(&conn_str, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            let (mut done, mut errors) = (0u64, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                done += 1;
                if let Err(e) = client.simple_query(&format!("INSERT INTO t VALUES ({done})")).await {
                    errors.push(format!("insert {done}: {}", pg_error(&e)));
                }
                // Read-your-writes: the read sees the insert, on whichever node it runs.
                match client.simple_query(&format!("SELECT count(*) FROM t WHERE id = {done}")).await {
                    Ok(m) => match simple_query_rows(&m).first().and_then(|r| r[0].clone()) {
                        Some(c) if c == "1" => {}
                        other => errors.push(format!("read {done}: {other:?}")),
                    },
                    Err(e) => errors.push(format!("read {done}: {}", pg_error(&e))),
                }
            }
            (done, errors)
        }
    });
    wait_until("node1 serving reads", Duration::from_secs(30), || in_rotation_with_units(&p, "node1"));

    // Added: monitored at once, in rotation once eligible, and the workload's reads reach it.
    std::fs::write(&p.config_path, with_nodes(&[0, 1, 2])).unwrap();
    p.admin("RELOAD");
    wait_until("node2 added and serving reads", Duration::from_secs(30), || in_rotation_with_units(&p, "node2"));
    let (nodes, i) = node_row(&p, "node2").unwrap();
    assert_eq!(column(&nodes, &nodes[i], "role"), "follower");
    assert_eq!(column(&nodes, &nodes[i], "streams_from"), "node0");

    // Removed: out of rotation, then gone from SHOW NODES once drained; nothing of pgcausal's
    // stays connected to it (pools, monitor, position poller, failover login).
    std::fs::write(&p.config_path, with_nodes(&[0, 2])).unwrap();
    p.admin("RELOAD");
    wait_until("node1 gone from SHOW NODES", Duration::from_secs(30), || node_row(&p, "node1").is_none());
    let connected_to_node1 = || {
        cluster.sql(
            1,
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'members_watch' OR datname = 'admin_members'",
        )
    };
    wait_until("pgcausal's connections to node1 closed", Duration::from_secs(30), || connected_to_node1() == "0");
    let units = |name: &str| {
        node_row(&p, name).map(|(nodes, i)| column(&nodes, &nodes[i], "units_routed").parse::<u64>().unwrap())
    };
    let before = units("node2").unwrap();
    wait_until("reads go on on node2", Duration::from_secs(30), || units("node2").unwrap() > before);
    assert!(p.log().contains("node removed"), "{}", p.log());
    let metrics = p.metrics();
    assert!(metrics.contains("pgcausal_node_up{node=\"node1\"} NaN"), "a removed node's gauges read NaN");

    // The leader can be neither removed nor moved: the reload is rejected whole.
    std::fs::write(&p.config_path, with_nodes(&[2])).unwrap();
    let error = p.admin_as(USER, PASSWORD, "RELOAD").unwrap_err();
    assert!(error.contains("\"node0\" is the leader"), "{error}");
    let (nodes, i) = node_row(&p, "node0").expect("node0 kept");
    assert_eq!(column(&nodes, &nodes[i], "role"), "leader");

    // A removed node added again gets a new slot and serves again.
    std::fs::write(&p.config_path, with_nodes(&[0, 1, 2])).unwrap();
    p.admin("RELOAD");
    wait_until("node1 back in rotation", Duration::from_secs(30), || in_rotation_with_units(&p, "node1"));
    assert!(p.metrics().contains("pgcausal_node_up{node=\"node1\"} 1"));

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (done, errors) = rt.block_on(workload).unwrap();
    assert!(errors.is_empty(), "{} of {done} round trips failed: {errors:?}", errors.len());
    assert!(done > 20, "the workload ran through the reloads ({done} round trips)");
}

/// A follower built (pg_basebackup) while pgcausal runs, with its replay held back 3 s, added
/// by RELOAD: SHOW NODES shows it catching up with its lag and routes nothing to it; once its
/// replay delay is lifted it catches up, enters rotation and serves reads.
#[test]
fn a_new_follower_serves_only_once_caught_up() {
    let tc = TestCluster::start(1, |_| {});
    tc.create_database("new_follower");
    tc.sql(0, "new_follower", "CREATE TABLE t (id serial, v text)");
    let p = ProxyProcess::start(
        &tc,
        ProxyOptions {
            extra: format!("[admin]\nusers = [\"{USER}\"]\n[routing]\nmax_lag = \"1s\"\n"),
            ..Default::default()
        },
    );
    // Writes all along, so a follower that replays late is measurably behind.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let writer = rt.spawn({
        let (stop, conn) = (stop.clone(), p.conn_str("new_follower"));
        async move {
            let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(connection);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                client.simple_query("INSERT INTO t (v) VALUES ('x')").await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    let started = Instant::now();
    let delay = [("recovery_min_apply_delay".to_string(), "3s".to_string())];
    let new = tc.cluster.lock().unwrap().add_follower(0, &delay).expect("a new follower");
    let port = tc.cluster.lock().unwrap().port(new);
    let text = std::fs::read_to_string(&p.config_path).unwrap();
    let text = text + &format!("[[nodes]]\nname = \"fresh\"\nhost = \"127.0.0.1\"\nport = {port}\n");
    std::fs::write(&p.config_path, text).unwrap();
    p.admin("RELOAD");
    wait_until("the new follower shown catching up", Duration::from_secs(30), || {
        node_row(&p, "fresh").is_some_and(|(nodes, i)| {
            column(&nodes, &nodes[i], "why_not").starts_with("catching up")
                && column(&nodes, &nodes[i], "lag_seconds").parse::<f64>().is_ok_and(|s| s > 1.0)
        })
    });
    let (nodes, i) = node_row(&p, "fresh").unwrap();
    assert_eq!(column(&nodes, &nodes[i], "units_routed"), "0", "nothing routed to a follower catching up");
    tc.sql(new, "postgres", "ALTER SYSTEM SET recovery_min_apply_delay = 0");
    tc.sql(new, "postgres", "SELECT pg_reload_conf()");
    wait_until("the new follower serving reads", Duration::from_secs(30), || {
        ok(p.psql("new_follower", &["-c", "SELECT count(*) FROM t"], None));
        in_rotation_with_units(&p, "fresh")
    });
    println!(
        "NEW FOLLOWER: built, added, caught up and serving reads {:?} after the base backup began",
        started.elapsed()
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    rt.block_on(writer).unwrap();
}
