//! One health monitor per node: probes role, timeline and WAL position over a control-plane connection.

use super::{NodeState, Role, Topology};
use crate::backend::failures::{Failure, Target};
use crate::config::{Config, NodeConfig};
use crate::consistency::format_lsn;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Called when a node's state changes: (node index, before, after).
pub type OnChange = Arc<dyn Fn(usize, &NodeState, &NodeState) + Send + Sync>;

/// One round trip: role, timeline, WAL position, replay lag, incarnation, and a standby's WAL
/// receiver (received position, streaming or not, sender). A standby's timeline is that of the
/// WAL it last received (NULL, so 0, without a WAL receiver or for a role without
/// pg_read_all_stats); its last restartpoint's timeline comes too, for when nothing better is
/// known (a standby that never streamed since it started, e.g. one whose history forked).
const PROBE_SQL: &str = "SELECT r, \
     CASE WHEN r THEN coalesce(w.received_tli, 0) ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END, \
     ((CASE WHEN r THEN coalesce(pg_last_wal_replay_lsn(), '0/0') ELSE pg_current_wal_lsn() END) - '0/0'::pg_lsn)::int8, \
     CASE WHEN NOT r OR pg_last_wal_receive_lsn() IS NULL OR pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() THEN 0 \
     ELSE coalesce((extract(epoch FROM now() - pg_last_xact_replay_timestamp()) * 1000)::int8, 0) END, \
     (extract(epoch FROM pg_postmaster_start_time()) * 1000000)::int8, \
     (coalesce(pg_last_wal_receive_lsn(), '0/0') - '0/0'::pg_lsn)::int8, \
     coalesce(w.status = 'streaming', false), w.sender_host, w.sender_port, \
     CASE WHEN r AND has_function_privilege('pg_control_checkpoint()', 'EXECUTE') \
     THEN (pg_control_checkpoint()).timeline_id ELSE 0 END \
     FROM pg_is_in_recovery() AS r LEFT JOIN pg_stat_wal_receiver w ON true";

pub fn control_pool(config: &Config, node: &NodeConfig) -> Pool {
    let (user, password) = config.monitor_login();
    login_pool(config, node, (user, password), "pgcausal-monitor", config.monitor.timeout)
}

/// A one-connection pool to `node` as `login`, in the monitor database, with connect,
/// keepalive and TCP user timeouts (a hung node must not hang its caller).
pub fn login_pool(config: &Config, node: &NodeConfig, login: (&str, &str), name: &str, timeout: Duration) -> Pool {
    let mut pg = tokio_postgres::Config::new();
    pg.host(&node.host)
        .port(node.port)
        .user(login.0)
        .password(login.1)
        .dbname(&config.monitor.database)
        .application_name(name)
        .connect_timeout(timeout)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(5))
        .tcp_user_timeout(timeout);
    let recycling = ManagerConfig { recycling_method: RecyclingMethod::Fast };
    let manager = match control_tls(node, &mut pg) {
        Some(tls) => Manager::from_config(pg, tls, recycling),
        None => Manager::from_config(pg, tokio_postgres::NoTls, recycling),
    };
    Pool::builder(manager).max_size(1).build().expect("no runtime-dependent timeouts")
}

/// TLS for a control-plane login to `node`, as its `tls` mode says (None: plain text); sets the
/// matching sslmode on `pg`. A CA file that does not load is logged and the login goes on
/// without TLS only in prefer mode (in the stricter modes it then fails, as it should).
pub fn control_tls(
    node: &NodeConfig,
    pg: &mut tokio_postgres::Config,
) -> Option<tokio_postgres_rustls::MakeRustlsConnect> {
    use crate::config::ServerTlsMode;
    use tokio_postgres::config::SslMode;
    pg.ssl_mode(match node.tls {
        ServerTlsMode::Disable => return None,
        ServerTlsMode::Prefer => SslMode::Prefer,
        ServerTlsMode::Require | ServerTlsMode::VerifyFull => SslMode::Require,
    });
    match node.server_tls().client_config() {
        Ok(config) => config.map(|c| tokio_postgres_rustls::MakeRustlsConnect::new((*c).clone())),
        Err(e) => {
            tracing::warn!(node = %node.name, error = %e, "TLS to the node cannot be set up");
            if node.tls != ServerTlsMode::Prefer {
                pg.ssl_mode(SslMode::Require); // no TLS available: the login fails rather than goes plain
                return Some(tokio_postgres_rustls::MakeRustlsConnect::new(unusable_tls()));
            }
            pg.ssl_mode(SslMode::Disable);
            None
        }
    }
}

/// A TLS configuration that trusts no certificate: a login that must be TLS and cannot be fails.
fn unusable_tls() -> tokio_rustls::rustls::ClientConfig {
    let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_root_certificates(tokio_rustls::rustls::RootCertStore::empty())
        .with_no_client_auth()
}

/// Who a node's control-plane connections log in as, for log lines.
pub fn control_target(config: &Config, node: &NodeConfig) -> Target {
    Target {
        node: node.name.clone(),
        addr: format!("{}:{}", node.host, node.port),
        user: config.monitor_login().0.to_string(),
        database: config.monitor.database.clone(),
        purpose: "control",
    }
}

async fn probe(pool: &Pool, topology: &Topology) -> Result<NodeState, Failure> {
    let client = pool.get().await.map_err(|e| Failure::of_control(&e))?;
    // Prepared once per connection: a text query was parsed, described and closed every probe.
    let statement = client.prepare_cached(PROBE_SQL).await.map_err(|e| Failure::of_pg(&e))?;
    let row = client.query_one(&statement, &[]).await.map_err(|e| Failure::of_pg(&e))?;
    let in_recovery: bool = row.get(0);
    Ok(NodeState {
        up: true,
        role: if in_recovery { Role::Standby } else { Role::Primary },
        timeline: row.get::<_, i32>(1) as u32,
        lsn: row.get::<_, i64>(2).max(0) as u64,
        replay_lag_ms: row.get::<_, i64>(3).max(0) as u64,
        incarnation: row.get(4),
        receive_lsn: row.get::<_, i64>(5).max(0) as u64,
        streaming: row.get(6),
        upstream: topology.node_at(row.get(7), row.get(8)),
        checkpoint_timeline: row.get::<_, Option<i32>>(9).unwrap_or(0) as u32,
    })
}

/// Starts the monitor of node `i` on the control thread; it runs until aborted (the proxy
/// stopped, or a reload removed the node).
pub fn spawn(config: &Config, i: usize, topology: Arc<Topology>, on_change: OnChange) -> tokio::task::JoinHandle<()> {
    let node = &config.nodes[i];
    let pool = control_pool(config, node);
    let (interval, timeout) = (config.monitor.interval, config.monitor.timeout);
    let timeouts_to_down = config.monitor.timeouts_to_down;
    let name = node.name.clone();
    let target = control_target(config, node);
    let up = metrics::gauge!(crate::metrics::NODE_UP, "node" => name.clone());
    let leader = metrics::gauge!(crate::metrics::NODE_IS_LEADER, "node" => name.clone());
    let probe_time = metrics::histogram!(crate::metrics::NODE_PROBE_SECONDS, "node" => name.clone());
    crate::control::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut timeouts = Timeouts::new(timeouts_to_down);
        loop {
            ticker.tick().await;
            let started = Instant::now();
            let probed = tokio::time::timeout(timeout, probe(&pool, &topology)).await;
            probe_time.record(started.elapsed().as_secs_f64());
            let failures = topology.control_failures(i);
            let state = match probed {
                Ok(Ok(state)) => {
                    failures.succeeded(&target, "monitor");
                    state
                }
                Ok(Err(failure)) => {
                    tracing::debug!(node = %name, sqlstate = failure.sqlstate.as_deref().map(tracing::field::display), error = %failure.message, "probe failed");
                    failures.failed(&target, "monitor", failure);
                    NodeState::default()
                }
                Err(_) if timeouts.tolerated() => {
                    let timeout = humantime::format_duration(timeout).to_string();
                    tracing::info!(node = %name, %timeout, "probe timed out; the node keeps its state until the next one");
                    continue;
                }
                Err(_) => {
                    tracing::debug!(node = %name, "probe timed out");
                    let waited = humantime::format_duration(timeout);
                    failures.failed(&target, "monitor", Failure::timeout(format!("probe timed out after {waited}")));
                    NodeState::default()
                }
            };
            timeouts.answered();
            up.set(if state.up { 1.0 } else { 0.0 });
            let before = topology.update(i, state);
            let snapshot = topology.snapshot();
            leader.set(if snapshot.leader == Some(i) { 1.0 } else { 0.0 });
            // Compared as stored: what a probe could not see was carried from before.
            let state = &snapshot.nodes[i];
            if state.changed_from(&before) {
                log_change(&name, &before, state, &topology);
                on_change(i, &before, state);
            }
        }
    })
}

/// One line per node state change, as fields: role, timeline (when known), WAL position as
/// PostgreSQL writes it, lag (standbys), and what the node was before.
fn log_change(node: &str, before: &NodeState, after: &NodeState, topology: &Topology) {
    let was = if before.up { before.role.name() } else { "down" };
    if !after.up {
        tracing::info!(%node, up = false, %was, "node state changed");
        return;
    }
    let restarted = before.up && before.incarnation != after.incarnation;
    tracing::info!(
        %node,
        up = true,
        role = %after.role.name(),
        timeline = (after.timeline != 0).then_some(after.timeline),
        lsn = %format_lsn(after.lsn),
        lag_ms = (after.role == Role::Standby).then_some(after.replay_lag_ms),
        streams_from = after.upstream.map(|u| topology.name(u)),
        %was,
        restarted = restarted.then_some(true),
        "node state changed"
    );
}

/// Counts probe timeouts in a row: the first `limit - 1` are tolerated (the node keeps its last
/// known state), the `limit`-th is a failure. Any answer, or an error, starts the count afresh.
#[derive(Debug)]
pub struct Timeouts {
    limit: u32,
    in_a_row: u32,
}

impl Timeouts {
    pub fn new(limit: u32) -> Timeouts {
        Timeouts { limit: limit.max(1), in_a_row: 0 }
    }

    /// A probe ended without timing out (an answer or an error): the count starts afresh.
    pub fn answered(&mut self) {
        self.in_a_row = 0;
    }

    /// A probe timed out; true when this one is tolerated.
    pub fn tolerated(&mut self) -> bool {
        self.in_a_row += 1;
        if self.in_a_row < self.limit {
            return true;
        }
        self.in_a_row = 0;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::Timeouts;

    #[test]
    fn timeouts_in_a_row_are_tolerated_up_to_the_limit() {
        let mut t = Timeouts::new(3);
        assert!(t.tolerated() && t.tolerated(), "the first two are tolerated");
        assert!(!t.tolerated(), "the third is a failure");
        assert!(t.tolerated(), "and the count starts again after it");
        t.answered();
        assert!(t.tolerated() && t.tolerated() && !t.tolerated(), "an answer resets the count");
        let mut once = Timeouts::new(1);
        assert!(!once.tolerated() && !once.tolerated(), "limit 1: every timeout is a failure");
        assert!(!Timeouts::new(0).tolerated(), "0 behaves as 1");
    }
}
