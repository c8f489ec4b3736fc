//! Every metric name in one place, per-node metric handles, and the Prometheus exporter.

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics::{Counter, Gauge, Histogram};
use std::net::SocketAddr;

pub const CLIENT_CONNECTIONS: &str = "pgcausal_client_connections";
pub const CLIENT_LOGINS: &str = "pgcausal_client_logins_total";
pub const SERVER_CONNECTIONS: &str = "pgcausal_server_connections";
pub const SERVER_CONNECTS: &str = "pgcausal_server_connects_total";
pub const QUERIES: &str = "pgcausal_queries_total";
pub const POOL_WAIT: &str = "pgcausal_pool_wait_seconds";
pub const POOL_TIMEOUTS: &str = "pgcausal_pool_timeouts_total";
pub const ERRORS: &str = "pgcausal_errors_total";
pub const CANCEL_REQUESTS: &str = "pgcausal_cancel_requests_total";
pub const ROUTED: &str = "pgcausal_routed_total";
pub const ROUTE_RETRIES: &str = "pgcausal_route_retries_total";
pub const CLASSIFIER_CACHE: &str = "pgcausal_classifier_cache_total";
pub const UNPARSED: &str = "pgcausal_unparsed_statements_total";
pub const CONSISTENCY_WAIT: &str = "pgcausal_consistency_wait_seconds";
pub const CONSISTENCY_FALLBACKS: &str = "pgcausal_consistency_fallbacks_total";
pub const FLOOR_CLAMPS: &str = "pgcausal_floor_clamps_total";
pub const SESSION_PINS: &str = "pgcausal_session_pins_total";
pub const STATE_REPLAY_FAILURES: &str = "pgcausal_state_replay_failures_total";
pub const NODE_UP: &str = "pgcausal_node_up";
pub const NODE_IS_LEADER: &str = "pgcausal_node_is_leader";
pub const NODE_PROBE_SECONDS: &str = "pgcausal_node_probe_seconds";
pub const POSITION_PROBES: &str = "pgcausal_position_probes_total";
pub const CONFIG_RELOADS: &str = "pgcausal_config_reloads_total";

/// Registers help texts; called once at start.
pub fn describe() {
    describe_gauge!(CLIENT_CONNECTIONS, "Client connections currently open");
    describe_counter!(CLIENT_LOGINS, "Client login attempts by result");
    describe_gauge!(SERVER_CONNECTIONS, "Server connections currently open, by node");
    describe_counter!(SERVER_CONNECTS, "Server connection attempts by node and result");
    describe_counter!(QUERIES, "Queries (simple Query or extended Execute) sent, by node");
    describe_histogram!(POOL_WAIT, "Time a client waited for a server connection, by node");
    describe_counter!(POOL_TIMEOUTS, "Clients that gave up waiting for a server connection, by node");
    describe_counter!(ERRORS, "Errors sent to clients, by SQLSTATE class and source (server or proxy)");
    describe_counter!(CANCEL_REQUESTS, "Cancel requests by result");
    describe_counter!(
        ROUTED,
        "Units of work (transactions or statements) leased to a node, by node and target (leader, follower)"
    );
    describe_counter!(
        ROUTE_RETRIES,
        "Read units re-run elsewhere before any row reached the client, by SQLSTATE or cause"
    );
    describe_counter!(CLASSIFIER_CACHE, "SQL classification cache lookups by result (hit, miss)");
    describe_counter!(
        UNPARSED,
        "Distinct statements sqlparser could not parse (routed by keyword, else to the leader)"
    );
    describe_histogram!(CONSISTENCY_WAIT, "Time reads waited for a follower to reach the session's floor");
    describe_counter!(CONSISTENCY_FALLBACKS, "Reads sent to the leader (or failed) for consistency, by reason");
    describe_counter!(FLOOR_CLAMPS, "Session floors clamped after a failover lost the WAL above them");
    describe_counter!(SESSION_PINS, "Sessions pinned to their server connection, by kind (listen, temp_table, ...)");
    describe_counter!(
        STATE_REPLAY_FAILURES,
        "Replays of a client's session state that failed, by kind: settings (the connection was closed and the \
         client's statement not sent) or prepared_statement (its EXECUTE gets the error)"
    );
    describe_gauge!(NODE_UP, "1 if the node's last health probe succeeded");
    describe_gauge!(NODE_IS_LEADER, "1 if the node is the current leader");
    describe_histogram!(NODE_PROBE_SECONDS, "Duration of node health probes");
    describe_counter!(CONFIG_RELOADS, "Configuration reloads (SIGHUP, RELOAD) by result (ok, error)");
    describe_counter!(
        POSITION_PROBES,
        "WAL position probes sent, by node and cause (tick: the poll interval, wanted: a waiting session asked)"
    );
}

/// Starts the /metrics HTTP listener on the control thread (off the data path's runtime).
pub fn install_exporter(listen: SocketAddr) -> anyhow::Result<()> {
    let _control = crate::control::handle().enter();
    let (recorder, exporter) = metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(listen)
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
            &[0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0],
        )?
        .build()?;
    let _ = HANDLE.set(recorder.handle());
    metrics::set_global_recorder(recorder)?;
    crate::control::spawn(async move {
        if let Err(e) = exporter.await {
            tracing::warn!(error = ?e, "the metrics listener stopped");
        }
    });
    describe();
    Ok(())
}

/// The recorder's handle, for reading the metrics back (SHOW STATS) as Prometheus would.
static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> = std::sync::OnceLock::new();

/// Every metric in Prometheus' text format; None when metrics are disabled (`[metrics] listen = ""`).
pub fn render() -> Option<String> {
    HANDLE.get().map(metrics_exporter_prometheus::PrometheusHandle::render)
}

/// Publishes the classifier's own counters (kept as atomics off the metrics hot path).
pub fn classifier(stats: &crate::route::CacheStats) {
    counter!(CLASSIFIER_CACHE, "result" => "hit").absolute(stats.hits);
    counter!(CLASSIFIER_CACHE, "result" => "miss").absolute(stats.misses);
    counter!(UNPARSED).absolute(stats.unparsed);
}

/// Counts one error sent to a client.
pub fn error(sqlstate: &[u8], source: &'static str) {
    let class = String::from_utf8_lossy(&sqlstate[..2.min(sqlstate.len())]).into_owned();
    counter!(ERRORS, "class" => class, "source" => source).increment(1);
}

/// Handles registered once per node, so the data path only does atomic adds.
pub struct NodeMetrics {
    pub queries: Counter,
    pub pool_wait: Histogram,
    pub pool_timeouts: Counter,
    /// Units leased here as a follower read, or as leader work.
    pub routed_reads: Counter,
    pub routed_leader: Counter,
    server_connections: Gauge,
    connects_ok: Counter,
    connects_failed: Counter,
}

impl NodeMetrics {
    pub fn new(node: &str) -> NodeMetrics {
        let node = node.to_string();
        NodeMetrics {
            queries: counter!(QUERIES, "node" => node.clone()),
            pool_wait: histogram!(POOL_WAIT, "node" => node.clone()),
            pool_timeouts: counter!(POOL_TIMEOUTS, "node" => node.clone()),
            routed_reads: counter!(ROUTED, "node" => node.clone(), "target" => "follower"),
            routed_leader: counter!(ROUTED, "node" => node.clone(), "target" => "leader"),
            server_connections: gauge!(SERVER_CONNECTIONS, "node" => node.clone()),
            connects_ok: counter!(SERVER_CONNECTS, "node" => node.clone(), "result" => "ok"),
            connects_failed: counter!(SERVER_CONNECTS, "node" => node, "result" => "error"),
        }
    }

    pub fn connect_result(&self, ok: bool) {
        if ok { &self.connects_ok } else { &self.connects_failed }.increment(1);
    }

    pub fn server_connection(&self) -> GaugeGuard {
        GaugeGuard::new(self.server_connections.clone())
    }
}

/// Adds one to a gauge for as long as it lives.
pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    pub fn new(g: Gauge) -> GaugeGuard {
        g.increment(1.0);
        GaugeGuard(g)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}
