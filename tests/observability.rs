//! The metrics listener seen from outside: a real Prometheus scrapes a real pgcausal, every query
//! of the Grafana dashboard is valid and has data, the counters of a workload's error, failed
//! login, cancel and pin move; /health, /ready, /ready/writes follow the leader; unknown paths
//! are 404; counters known in advance are at 0 from the start.

mod support;

use pgcausal::cluster::StopMode;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

/// An HTTP/1.0 GET on loopback: (status, body).
fn get(port: u16, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let status = response.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// Polls `done` every 100 ms until it returns Some, or panics with `what` after `timeout`.
fn wait_for<T>(timeout: Duration, what: &str, mut done: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = done() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A `prometheus` server scraping one pgcausal every second; killed by PID when dropped.
struct Prometheus {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(metrics_port: u16) -> Prometheus {
        let dir = tempfile::Builder::new().prefix("pgcausal-prometheus-").tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: pgcausal\n    static_configs:\n      \
                 - targets: ['127.0.0.1:{metrics_port}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("prometheus runs (Debian package `prometheus`, installed by .ci/run)");
        let prometheus = Prometheus { child, port, dir };
        wait_for(Duration::from_secs(30), "prometheus to be ready", || {
            let ready = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() && get(port, "/-/ready").0 == 200;
            ready.then_some(())
        });
        prometheus
    }

    /// Evaluates an instant query: Ok(the result vector), or Err(what Prometheus said).
    fn query(&self, promql: &str) -> Result<Vec<serde_json::Value>, String> {
        let (status, body) = get(self.port, &format!("/api/v1/query?query={}", url_encode(promql)));
        let answer: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("HTTP {status}, not JSON ({e}): {body}"))?;
        if answer["status"] != "success" {
            return Err(format!("HTTP {status}: {body}"));
        }
        Ok(answer["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    fn has_data(&self, promql: &str) -> bool {
        self.query(promql).is_ok_and(|r| !r.is_empty())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprint_log_tail("prometheus", &self.log(), 20);
        }
        let _ = self.child.kill(); // by the PID we started
        let _ = self.child.wait();
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every panel's (title, PromQL) in the dashboard, rows' nested panels included.
fn dashboard_queries() -> Vec<(String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("grafana/pgcausal-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut panels: Vec<&serde_json::Value> = dashboard["panels"].as_array().unwrap().iter().collect();
    let nested: Vec<&serde_json::Value> = panels.iter().filter_map(|p| p["panels"].as_array()).flatten().collect();
    panels.extend(nested);
    let mut queries = Vec::new();
    for panel in panels {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                queries.push((panel["title"].as_str().unwrap_or("?").to_string(), expr.to_string()));
            }
        }
    }
    queries
}

/// Grafana's variables replaced as a dashboard showing everything would (`rate` = the window of
/// `$__rate_interval`, `range` = `$__range`).
fn substitute(expr: &str, rate: &str, range: &str) -> String {
    let out = expr
        .replace("$__rate_interval", rate)
        .replace("$__interval", rate)
        .replace("$__range", range)
        .replace("$instance", ".*")
        .replace("$node", ".*");
    assert!(!out.contains('$'), "a Grafana variable the test does not know: {expr}");
    out
}

#[test]
fn prometheus_scrapes_and_every_dashboard_query_has_data() {
    let cluster = shared_cluster();
    cluster.create_database("obs_dash");
    let p = ProxyProcess::start(cluster, ProxyOptions::default());
    let prometheus = Prometheus::start(p.metrics_port);
    let started = Instant::now();
    wait_for(Duration::from_secs(20), "the pgcausal target to be up", || {
        prometheus.has_data("up{job=\"pgcausal\"} == 1").then_some(())
    });
    // A scrape before the workload, so its increases are seen from the zero-initialized series.
    wait_for(Duration::from_secs(20), "a first sample", || {
        prometheus.has_data("pgcausal_session_pins_total{kind=\"listen\"} == 0").then_some(())
    });

    // The workload: reads and writes, an error, a failed login, a pin and a cancelled query.
    ok(p.psql("obs_dash", &["-c", "CREATE TABLE t (id int)", "-c", "INSERT INTO t VALUES (1)"], None));
    ok(p.psql("obs_dash", &["-c", "SELECT count(*) FROM t"], None));
    let failed = p.psql("obs_dash", &["-c", "SELECT 1/0"], None);
    assert!(String::from_utf8_lossy(&failed.stderr).contains("division by zero"), "{failed:?}");
    let refused = p.psql_as(USER, "wrong-password", "obs_dash", &["-c", "SELECT 1"], None);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("password authentication failed"), "{refused:?}");
    ok(p.psql("obs_dash", &["-c", "LISTEN obs_channel", "-c", "SELECT 1"], None));
    cancel_a_sleep(cluster, &p);

    // The increases reach Prometheus; then the dashboard's panels over them show them.
    let moved = [
        "pgcausal_errors_total{class=\"22\",source=\"server\"}",
        "pgcausal_client_logins_total{result=\"auth_failed\"}",
        "pgcausal_cancel_requests_total{result=\"forwarded\"}",
        "pgcausal_session_pins_total{kind=\"listen\"}",
    ];
    for series in moved {
        wait_for(Duration::from_secs(20), &format!("an increase of {series}"), || {
            prometheus.has_data(&format!("increase({series}[1m]) > 0")).then_some(())
        });
    }
    // Pool gauges are published every second: wait for the follower's and the leader's.
    wait_for(Duration::from_secs(10), "pool gauges", || {
        prometheus.has_data("count(pgcausal_pool_size_limit{database=\"obs_dash\"}) >= 2").then_some(())
    });

    let queries = dashboard_queries();
    assert!(queries.len() >= 40, "the dashboard has {} queries", queries.len());
    let mut problems = Vec::new();
    for (title, expr) in &queries {
        let promql = substitute(expr, "5s", "1m");
        match prometheus.query(&promql) {
            Ok(result) if result.is_empty() => problems.push(format!("{title}: no data for {promql}")),
            Ok(_) => {}
            Err(e) => problems.push(format!("{title}: {promql}: {e}")),
        }
        // The panels over the workload's counters show it over a window that spans it.
        let counts_workload = ["errors_total", "client_logins_total", "cancel_requests_total", "session_pins_total"];
        if counts_workload.iter().any(|m| expr.contains(m)) {
            let over_workload = format!("({}) > 0", substitute(expr, "1m", "1m"));
            if !prometheus.has_data(&over_workload) {
                problems.push(format!("{title}: no increase over the workload: {over_workload}"));
            }
        }
    }
    // The dashboard's variables list values of pgcausal_node_up's labels.
    for label in ["instance", "node"] {
        if !prometheus.has_data(&format!("count by ({label}) (pgcausal_node_up)")) {
            problems.push(format!("variable {label}: no pgcausal_node_up series"));
        }
    }
    assert!(problems.is_empty(), "dashboard queries failing:\n{}", problems.join("\n"));
    eprintln!("{} dashboard queries checked, {:?} after Prometheus started", queries.len(), started.elapsed());
}

/// Runs `SELECT pg_sleep(60)` through the proxy and cancels it (psql sends a CancelRequest on SIGINT).
fn cancel_a_sleep(cluster: &TestCluster, p: &ProxyProcess) {
    let child = Command::new(pg_bin("psql"))
        .args(["-X", "-h", "127.0.0.1", "-p", &p.port.to_string(), "-U", USER, "-d", "obs_dash"])
        .args(["-c", "SELECT pg_sleep(60)"])
        .env("PGPASSWORD", PASSWORD)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(20), "the sleep to run", || {
        let active = "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)' AND state = 'active'";
        (0..cluster.ports.len()).any(|i| cluster.sql(i, "postgres", active) == "1").then_some(())
    });
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("canceling statement due to user request"), "{stderr}");
}

/// Starts node 0 again if a test stopped it and did not get to restart it.
struct RestartLeader<'a>(&'a TestCluster);

impl Drop for RestartLeader<'_> {
    fn drop(&mut self) {
        let mut cluster = self.0.cluster.lock().unwrap_or_else(|e| e.into_inner());
        if !cluster.is_running(0) {
            let _ = cluster.start_node(0);
        }
    }
}

#[test]
fn health_and_readiness_follow_the_leader_and_known_counters_start_at_zero() {
    let cluster = TestCluster::start(1, |_| {});
    // Readiness follows the leader as the monitors see it: no failover may replace it here.
    let options = ProxyOptions { extra: "[failover]\nmode = \"off\"\n".into(), ..ProxyOptions::default() };
    let p = ProxyProcess::start(&cluster, options);
    let metrics = p.metrics();
    let zero = [
        "pgcausal_errors_total{class=\"40\",source=\"server\"} 0",
        "pgcausal_errors_total{class=\"57\",source=\"proxy\"} 0",
        "pgcausal_client_logins_total{result=\"auth_failed\"} 0",
        "pgcausal_cancel_requests_total{result=\"forwarded\"} 0",
        "pgcausal_cancel_requests_total{result=\"ignored\"} 0",
        "pgcausal_session_pins_total{kind=\"listen\"} 0",
        "pgcausal_session_pins_total{kind=\"temp_objects\"} 0",
        "pgcausal_route_retries_total{reason=\"25006\"} 0",
        "pgcausal_route_retries_total{reason=\"connection_lost\"} 0",
        "pgcausal_state_replay_failures_total{kind=\"settings\"} 0",
        // Not no_follower: the harness's readiness query may legitimately fall back before the
        // follower enters rotation. A strong-level fallback cannot happen in this test.
        "pgcausal_consistency_fallbacks_total{reason=\"strong\"} 0",
        "pgcausal_pool_timeouts_total{node=\"node1\"} 0",
        "pgcausal_config_reloads_total{result=\"error\"} 0",
        "pgcausal_floor_clamps_total 0",
        "pgcausal_leader_changes_total 0",
        "pgcausal_failovers_total{result=\"promoted\"} 0",
        "pgcausal_failover_vetoes_total 0",
        "pgcausal_split_brain 0",
    ];
    let missing: Vec<&str> = zero.iter().copied().filter(|line| !metrics.lines().any(|l| l == *line)).collect();
    assert!(missing.is_empty(), "not at 0 from the start: {missing:?}\n{metrics}");
    let version = format!("pgcausal_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
    for present in [version.as_str(), "process_open_fds "] {
        assert!(metrics.contains(present), "{present} missing:\n{metrics}");
    }
    // Node gauges follow the topology on the next upkeep tick (every second).
    wait_for(Duration::from_secs(5), "the leader's timeline and the follower's lag", || {
        let m = p.metrics();
        let lines = ["pgcausal_node_timeline{node=\"node0\"} 1", "pgcausal_replication_lag_seconds{node=\"node0\"} 0"];
        (lines.iter().all(|l| m.lines().any(|x| x == *l))
            && m.contains("pgcausal_replication_lag_bytes{node=\"node1\"} "))
        .then_some(())
    });

    let port = p.metrics_port;
    assert_eq!(get(port, "/health"), (200, "{\"healthy\":true}\n".into()));
    assert_eq!(get(port, "/ready"), (200, "{\"ready\":true}\n".into()));
    assert_eq!(get(port, "/ready/writes"), (200, "{\"ready\":true}\n".into()));
    assert_eq!(get(port, "/nothing-here").0, 404);
    assert_eq!(get(port, "/metricsx").0, 404);

    let _restart = RestartLeader(&cluster);
    cluster.cluster.lock().unwrap().stop_node(0, StopMode::Fast).expect("stop the leader");
    let unready = wait_for(Duration::from_secs(15), "/ready/writes to say no leader", || {
        assert_eq!(get(port, "/ready").0, 200, "reads are still served by the follower");
        let writes = get(port, "/ready/writes");
        (writes.0 == 503).then_some(writes.1)
    });
    assert_eq!(unready, "{\"ready\":false,\"reason\":\"no leader is known\"}\n");
    assert_eq!(get(port, "/health").0, 200);

    cluster.cluster.lock().unwrap().start_node(0).expect("start the leader again");
    wait_for(Duration::from_secs(30), "/ready/writes to be 200 again", || {
        assert_eq!(get(port, "/ready").0, 200, "reads are still served by the follower");
        (get(port, "/ready/writes").0 == 200).then_some(())
    });
    // The same node came back: not a leader change.
    assert!(p.metrics().lines().any(|l| l == "pgcausal_leader_changes_total 0"), "{}", p.metrics());
}
