//! Every metric name in one place, the series that exist from the start, per-node metric
//! handles, and the Prometheus recorder (its page is served by src/http.rs).

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::OnceLock;

pub const CLIENT_CONNECTIONS: &str = "pgcausal_client_connections";
pub const CLIENT_LOGINS: &str = "pgcausal_client_logins_total";
pub const SERVER_CONNECTIONS: &str = "pgcausal_server_connections";
pub const SERVER_CONNECTS: &str = "pgcausal_server_connects_total";
pub const QUERIES: &str = "pgcausal_queries_total";
pub const CLIENT_BYTES: &str = "pgcausal_client_bytes_total";
pub const REJOINS: &str = "pgcausal_rejoins_total";
pub const SYNC_STANDBYS: &str = "pgcausal_synchronous_standbys";
pub const SYNC_UNPROTECTED: &str = "pgcausal_synchronous_unprotected";
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
pub const NODE_WAL_POSITION: &str = "pgcausal_node_wal_position_bytes";
pub const NODE_TIMELINE: &str = "pgcausal_node_timeline";
pub const REPLICATION_LAG_BYTES: &str = "pgcausal_replication_lag_bytes";
pub const REPLICATION_LAG_SECONDS: &str = "pgcausal_replication_lag_seconds";
pub const LEADER_CHANGES: &str = "pgcausal_leader_changes_total";
pub const POOL_ACTIVE: &str = "pgcausal_pool_active_connections";
pub const POOL_IDLE: &str = "pgcausal_pool_idle_connections";
pub const POOL_WAITING: &str = "pgcausal_pool_waiting_clients";
pub const POOL_SIZE_LIMIT: &str = "pgcausal_pool_size_limit";
pub const UNIT_SECONDS: &str = "pgcausal_unit_seconds";
pub const CONFIG_RELOADS: &str = "pgcausal_config_reloads_total";
pub const CLIENTS: &str = "pgcausal_clients";
pub const BUILD_INFO: &str = "pgcausal_build_info";
pub const FAILOVERS: &str = "pgcausal_failovers_total";
pub const FAILOVER_VETOES: &str = "pgcausal_failover_vetoes_total";
pub const FAILOVER_PHASE_SECONDS: &str = "pgcausal_failover_phase_seconds";
pub const SWITCHOVER_WRITES_HELD: &str = "pgcausal_switchover_writes_held_seconds";
pub const LOST_WAL_BYTES: &str = "pgcausal_lost_wal_bytes_total";
pub const ACKED_AT_RISK: &str = "pgcausal_acknowledged_commits_at_risk_total";
pub const SPLIT_BRAIN: &str = "pgcausal_split_brain";
pub const NODE_FENCED: &str = "pgcausal_node_fenced";
pub const FAILOVER_ACTIONS: &str = "pgcausal_failover_actions_total";
pub const SERVER_CONNECTIONS_CUT: &str = "pgcausal_server_connections_cut_total";
pub const SESSION_PANICS: &str = "pgcausal_session_panics_total";

/// SQLSTATE classes clients commonly get, from servers and from the proxy itself (connection
/// exceptions, feature not supported, data, integrity, transaction state, auth, unknown database,
/// rollbacks, syntax/access, resources, limits, object state, operator intervention, system, internal).
pub const ERROR_CLASSES: [&str; 16] =
    ["08", "0A", "22", "23", "25", "26", "28", "3D", "40", "42", "53", "54", "55", "57", "58", "XX"];
pub const ERROR_SOURCES: [&str; 2] = ["server", "proxy"];
pub const LOGIN_RESULTS: [&str; 3] = ["ok", "auth_failed", "tls_required"];
pub const CANCEL_RESULTS: [&str; 4] = ["forwarded", "ignored", "failed", "synchronous_commit"];
pub const BYTE_DIRECTIONS: [&str; 2] = ["received", "sent"];
pub const PIN_KINDS: [&str; 6] =
    ["listen", "temp_table", "temp_objects", "advisory_lock", "hold_cursor", "untracked_state"];
/// What `placement::retry_on` re-runs a read for (any 08 code does: PostgreSQL's are listed), and
/// a connection lost mid-read.
pub const RETRY_REASONS: [&str; 13] = [
    "25006",
    "57P01",
    "57P02",
    "57P03",
    "40001",
    "08000",
    "08001",
    "08003",
    "08004",
    "08006",
    "08007",
    "08P01",
    "connection_lost",
];
pub const REPLAY_FAILURE_KINDS: [&str; 2] = ["settings", "prepared_statement"];
pub const RELOAD_RESULTS: [&str; 2] = ["ok", "error"];

/// Registers help texts; called once at start.
pub fn describe() {
    describe_gauge!(CLIENT_CONNECTIONS, "Client connections currently open");
    describe_counter!(CLIENT_LOGINS, "Client login attempts by result");
    describe_gauge!(SERVER_CONNECTIONS, "Server connections currently open, by node");
    describe_counter!(SERVER_CONNECTS, "Server connection attempts by node and result");
    describe_counter!(QUERIES, "Queries (simple Query or extended Execute) sent, by node");
    describe_counter!(REJOINS, "Runs of failover.rejoin_command, by result");
    describe_gauge!(SYNC_STANDBYS, "Followers named in the leader's synchronous_standby_names, as pgcausal set it");
    describe_gauge!(SYNC_UNPROTECTED, "1 while replication.synchronous = on runs with no synchronous standby");
    describe_counter!(CLIENT_BYTES, "Bytes received from and sent to clients in their sessions, by direction");
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
    describe_counter!(
        POSITION_PROBES,
        "WAL position probes sent, by node and cause (tick: the poll interval, wanted: a waiting session asked)"
    );
    describe_gauge!(
        NODE_WAL_POSITION,
        "A primary's current WAL position, a standby's replay position, as of its last successful probe"
    );
    describe_gauge!(NODE_TIMELINE, "A primary's timeline as of its last successful probe (NaN for a standby)");
    describe_gauge!(
        REPLICATION_LAG_BYTES,
        "WAL bytes a standby has yet to replay behind the leader (NaN while down or no leader is known)"
    );
    describe_gauge!(
        REPLICATION_LAG_SECONDS,
        "How long a standby has had WAL received but not replayed (NaN while down)"
    );
    describe_counter!(LEADER_CHANGES, "Times the leader became another node than the last known leader");
    describe_gauge!(POOL_ACTIVE, "Server connections leased, opening or resetting, by node, database and user");
    describe_gauge!(POOL_IDLE, "Idle server connections in the pool, by node, database and user");
    describe_gauge!(POOL_WAITING, "Clients waiting for a server connection, by node, database and user");
    describe_gauge!(
        POOL_SIZE_LIMIT,
        "Most server connections the pool may hold (pool.size), by node, database and user"
    );
    describe_histogram!(UNIT_SECONDS, "Duration of units of work, by node and target (leader, follower)");
    describe_counter!(CONFIG_RELOADS, "Configuration reloads by result");
    describe_gauge!(CLIENTS, "Logged-in clients by state (idle, waiting for a server connection or RESUME, active)");
    describe_gauge!(BUILD_INFO, "Always 1; the version label says which pgcausal runs");
    describe_counter!(
        FAILOVERS,
        "Failover attempts and switchovers by result (promoted, switched_over, aborted: a switchover called off, \
         vetoed: a follower still heard the leader, recovered: the leader answered again first, no_candidate, failed)"
    );
    describe_counter!(FAILOVER_VETOES, "Confirmations refused because a follower still received WAL from the leader");
    describe_histogram!(
        FAILOVER_PHASE_SECONDS,
        "Duration of failover and switchover phases (detect, confirm, drain, freeze, promote, repoint)"
    );
    describe_histogram!(
        SWITCHOVER_WRITES_HELD,
        "How long a switchover held the units that need the leader, from the hold to the new leader"
    );
    describe_counter!(LOST_WAL_BYTES, "WAL an old leader had flushed past the new leader's switch point");
    describe_counter!(
        ACKED_AT_RISK,
        "Write units pgcausal acknowledged that may lie above a new timeline's switch point (an upper bound)"
    );
    describe_gauge!(SPLIT_BRAIN, "1 while more than one primary is up (only the leader is routed to)");
    describe_gauge!(NODE_FENCED, "1 while the node is fenced: never routed to until it rejoins as a follower");
    describe_counter!(
        FAILOVER_ACTIONS,
        "Actions the failover driver ran on nodes, by action (freeze, promote, repoint, fence) and result"
    );
    describe_counter!(
        SERVER_CONNECTIONS_CUT,
        "Server connections cut because their node went down or was fenced, by node"
    );
    describe_counter!(SESSION_PANICS, "Client connections ended by a panic in pgcausal (only that client was closed)");
}

/// Creates the series whose labels are known in advance, at 0, so a rate or increase over
/// them has data from the start instead of appearing with their first event.
pub fn register_known() {
    for class in ERROR_CLASSES {
        for source in ERROR_SOURCES {
            counter!(ERRORS, "class" => class, "source" => source).absolute(0);
        }
    }
    let labelled: [(&'static str, &'static str, &[&'static str]); 7] = [
        (CLIENT_BYTES, "direction", &BYTE_DIRECTIONS),
        (CLIENT_LOGINS, "result", &LOGIN_RESULTS),
        (CANCEL_REQUESTS, "result", &CANCEL_RESULTS),
        (SESSION_PINS, "kind", &PIN_KINDS),
        (ROUTE_RETRIES, "reason", &RETRY_REASONS),
        (STATE_REPLAY_FAILURES, "kind", &REPLAY_FAILURE_KINDS),
        (CONFIG_RELOADS, "result", &RELOAD_RESULTS),
    ];
    for (name, label, values) in labelled {
        for &value in values {
            counter!(name, label => value).absolute(0);
        }
    }
    for result in ["hit", "miss"] {
        counter!(CLASSIFIER_CACHE, "result" => result).absolute(0);
    }
    for outcome in crate::topology::failover::Outcome::COUNTED {
        counter!(FAILOVERS, "result" => outcome.label()).absolute(0);
    }
    gauge!(SYNC_STANDBYS).set(0.0);
    for result in ["ok", "error"] {
        counter!(REJOINS, "result" => result).absolute(0);
    }
    gauge!(SYNC_UNPROTECTED).set(0.0);
    for action in ["freeze", "promote", "repoint", "fence", "synchronous", "checkpoint", "unfence"] {
        for result in ["ok", "error"] {
            counter!(FAILOVER_ACTIONS, "action" => action, "result" => result).absolute(0);
        }
    }
    gauge!(SPLIT_BRAIN).set(0.0);
    for name in [UNPARSED, FLOOR_CLAMPS, LEADER_CHANGES, FAILOVER_VETOES, LOST_WAL_BYTES, ACKED_AT_RISK, SESSION_PANICS]
    {
        counter!(name).absolute(0);
    }
    gauge!(CLIENT_CONNECTIONS).increment(0.0);
    let _ = histogram!(CONSISTENCY_WAIT);
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// Installs the process-wide Prometheus recorder (once; later calls get the same handle), with
/// help texts and the series known in advance. The caller serves `handle.render()`.
pub fn install_recorder() -> anyhow::Result<PrometheusHandle> {
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
            &[0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0],
        )?
        .install_recorder()?;
    describe();
    register_known();
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// The recorder's handle, once installed: what /metrics serves and SHOW STATS reads back.
static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Every metric in Prometheus' text format; None when metrics are disabled (`[metrics] listen = ""`).
pub fn render() -> Option<String> {
    HANDLE.get().map(PrometheusHandle::render)
}

/// Publishes the classifier's own counters (kept as atomics off the metrics hot path).
pub fn classifier(stats: &crate::route::CacheStats) {
    counter!(CLASSIFIER_CACHE, "result" => "hit").absolute(stats.hits);
    counter!(CLASSIFIER_CACHE, "result" => "miss").absolute(stats.misses);
    counter!(UNPARSED).absolute(stats.unparsed);
}

/// Records one failover phase's duration.
pub fn histogram(name: &'static str, phase: &'static str, took: std::time::Duration) {
    histogram!(name, "phase" => phase).record(took.as_secs_f64());
}

pub fn counter(name: &'static str) {
    counter!(name).increment(1);
}

pub fn counter_by(name: &'static str, by: u64) {
    counter!(name).increment(by);
}

/// Counts one ended failover attempt.
pub fn failover(outcome: crate::topology::failover::Outcome) {
    counter!(FAILOVERS, "result" => outcome.label()).increment(1);
}

/// The leader's synchronous standbys as pgcausal set them, and whether synchronous = on runs
/// with none (commits acknowledged unprotected).
pub fn synchronous_standbys(members: usize, unprotected: bool) {
    gauge!(SYNC_STANDBYS).set(members as f64);
    gauge!(SYNC_UNPROTECTED).set(if unprotected { 1.0 } else { 0.0 });
}

/// Counts one run of failover.rejoin_command.
pub fn rejoin(ok: bool) {
    counter!(REJOINS, "result" => if ok { "ok" } else { "error" }).increment(1);
}

/// Counts one action the failover driver ran on a node.
pub fn action(action: &'static str, ok: bool) {
    counter!(FAILOVER_ACTIONS, "action" => action, "result" => if ok { "ok" } else { "error" }).increment(1);
}

/// Counts one error sent to a client.
pub fn error(sqlstate: &[u8], source: &'static str) {
    let class = String::from_utf8_lossy(&sqlstate[..2.min(sqlstate.len())]).into_owned();
    counter!(ERRORS, "class" => class, "source" => source).increment(1);
}

/// Bytes a session moved to and from its client, added up in plain integers as it goes and
/// added to the counters once per unit (and at the session's end): no atomic per read or write.
#[derive(Default)]
pub struct ClientTraffic {
    pub received: u64,
    pub sent: u64,
}

impl ClientTraffic {
    pub fn flush(&mut self) {
        static COUNTERS: OnceLock<(Counter, Counter)> = OnceLock::new();
        let (received, sent) = COUNTERS.get_or_init(|| {
            (counter!(CLIENT_BYTES, "direction" => "received"), counter!(CLIENT_BYTES, "direction" => "sent"))
        });
        received.increment(std::mem::take(&mut self.received));
        sent.increment(std::mem::take(&mut self.sent));
    }
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
    unit_follower: Histogram,
    unit_leader: Histogram,
    wal_position: Gauge,
    timeline: Gauge,
    lag_bytes: Gauge,
    lag_seconds: Gauge,
    fenced: Gauge,
    node: String,
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
            connects_failed: counter!(SERVER_CONNECTS, "node" => node.clone(), "result" => "error"),
            unit_follower: histogram!(UNIT_SECONDS, "node" => node.clone(), "target" => "follower"),
            unit_leader: histogram!(UNIT_SECONDS, "node" => node.clone(), "target" => "leader"),
            wal_position: gauge!(NODE_WAL_POSITION, "node" => node.clone()),
            timeline: gauge!(NODE_TIMELINE, "node" => node.clone()),
            lag_bytes: gauge!(REPLICATION_LAG_BYTES, "node" => node.clone()),
            lag_seconds: gauge!(REPLICATION_LAG_SECONDS, "node" => node.clone()),
            fenced: gauge!(NODE_FENCED, "node" => node.clone()),
            node,
        }
    }

    /// A reload removed the node: its state gauges read NaN (Prometheus keeps a series once
    /// exported; NaN shows as a gap rather than a frozen last value). A node added again under
    /// the same name publishes over them.
    pub fn removed(&self) {
        self.lag_bytes.set(f64::NAN);
        self.lag_seconds.set(f64::NAN);
        self.wal_position.set(f64::NAN);
        self.timeline.set(f64::NAN);
        self.fenced.set(0.0);
        gauge!(NODE_UP, "node" => self.node.clone()).set(f64::NAN);
        gauge!(NODE_IS_LEADER, "node" => self.node.clone()).set(0.0);
    }

    /// Where a finished unit of work's duration goes: `.record(started.elapsed())` once per unit,
    /// `follower` as leased (a read on a follower, or leader work).
    pub fn unit_latency(&self, follower: bool) -> &Histogram {
        if follower {
            &self.unit_follower
        } else {
            &self.unit_leader
        }
    }

    /// Publishes what the monitor last saw of this node: its WAL position and timeline (None:
    /// unknown, the gauges keep their last value), and its lag behind the leader in bytes and
    /// seconds (NaN: not measurable now).
    pub fn node_state(&self, position: Option<u64>, timeline: Option<u32>, lag_bytes: f64, lag_seconds: f64) {
        if let Some(position) = position {
            self.wal_position.set(position as f64);
        }
        if let Some(timeline) = timeline {
            self.timeline.set(f64::from(timeline));
        }
        self.lag_bytes.set(lag_bytes);
        self.lag_seconds.set(lag_seconds);
    }

    pub fn fenced(&self, fenced: bool) {
        self.fenced.set(if fenced { 1.0 } else { 0.0 });
    }

    pub fn connect_result(&self, ok: bool) {
        if ok { &self.connects_ok } else { &self.connects_failed }.increment(1);
    }

    pub fn server_connection(&self) -> GaugeGuard {
        GaugeGuard::new(self.server_connections.clone())
    }
}

/// One pool's gauges, set by the control thread's upkeep tick from what the pool keeps anyway.
pub struct PoolGauges {
    active: Gauge,
    idle: Gauge,
    waiting: Gauge,
    size_limit: Gauge,
}

/// What a pool holds at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Leased, or being opened or reset.
    pub active: usize,
    pub idle: usize,
    /// Clients queued for a connection (and still waiting).
    pub waiting: usize,
    /// How long the longest-waiting of them has waited.
    pub longest_wait: Option<std::time::Duration>,
    pub size_limit: usize,
}

impl PoolStats {
    /// Connections counted against the limit: active and idle.
    pub fn size(&self) -> usize {
        self.active + self.idle
    }
}

impl PoolGauges {
    pub fn new(node: &str, database: &str, user: &str) -> PoolGauges {
        let labels = [("node", node.to_string()), ("database", database.to_string()), ("user", user.to_string())];
        PoolGauges {
            active: gauge!(POOL_ACTIVE, &labels),
            idle: gauge!(POOL_IDLE, &labels),
            waiting: gauge!(POOL_WAITING, &labels),
            size_limit: gauge!(POOL_SIZE_LIMIT, &labels),
        }
    }

    pub fn publish(&self, stats: PoolStats) {
        self.active.set(stats.active as f64);
        self.idle.set(stats.idle as f64);
        self.waiting.set(stats.waiting as f64);
        self.size_limit.set(stats.size_limit as f64);
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
