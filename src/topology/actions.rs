//! What the failover driver does to a node, one SQL conversation each: read its WAL receiver,
//! freeze it, promote it, repoint it, fence it (and lift that), checkpoint it and read its last
//! WAL position for a switchover, and check the failover login may do all that.

use crate::backend::failures::Failure;
use crate::config::{Config, NodeConfig};
use crate::lexical::quote_literal;
use deadpool_postgres::{Object, Pool};
use std::time::Duration;

use super::failover::Receiver;
use super::monitor::login_pool;

/// A failed action: which, on which node, and PostgreSQL's own message.
#[derive(Debug, thiserror::Error)]
#[error("{action} on {node}: {message}")]
pub struct ActionError {
    pub action: &'static str,
    pub node: String,
    pub message: String,
}

/// One small pool per node of connections as the failover login, made at first use (the
/// permission check at a node's first contact) so that a failover does not pay a login per
/// action; made again when RELOAD changed the login or the timeouts.
#[derive(Default)]
pub struct NodeLogins {
    pools: std::sync::Mutex<std::collections::HashMap<usize, (LoginKey, Pool)>>,
}

/// What a node's failover pool was made with.
type LoginKey = (String, String, Duration);

impl NodeLogins {
    /// Closes the connections to nodes a reload removed.
    pub fn forget(&self, removed: impl Fn(usize) -> bool) {
        self.pools.lock().expect("failover logins poisoned").retain(|&i, _| !removed(i));
    }

    /// A session on node `i` as the failover login, every statement bounded by `action_timeout`.
    pub async fn open(&self, config: &Config, i: usize) -> Result<NodeSession, ActionError> {
        let timeout = action_timeout(config);
        let node = &config.nodes[i];
        let (user, password) = config.failover_login();
        let key: LoginKey = (user.to_string(), password.to_string(), timeout);
        let pool = {
            let mut pools = self.pools.lock().expect("failover logins poisoned");
            let made = pools.entry(i).or_insert_with(|| {
                (key.clone(), login_pool(config, node, (user, password), "pgcausal-failover", timeout))
            });
            if made.0 != key {
                *made = (key, login_pool(config, node, (user, password), "pgcausal-failover", timeout));
            }
            made.1.clone()
        };
        let error = |message: String| ActionError { action: "connect", node: node.name.clone(), message };
        let client = match tokio::time::timeout(timeout, pool.get()).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => return Err(error(Failure::of_control(&e).message)),
            Err(_) => return Err(error(format!("no answer within {}", humantime::format_duration(timeout)))),
        };
        Ok(NodeSession { client, node: node.name.clone(), timeout })
    }
}

/// How long one action's statement may take: a hung node must not hang the driver, but a
/// loaded one must not lose its candidacy to one slow login.
pub fn action_timeout(config: &Config) -> Duration {
    config.monitor.timeout.max(config.failover.timeout)
}

/// A connection to one node as the failover login, bounded by `timeout` for every statement.
pub struct NodeSession {
    client: Object,
    node: String,
    timeout: Duration,
}

impl NodeSession {
    fn fail(&self, action: &'static str, message: String) -> ActionError {
        ActionError { action, node: self.node.clone(), message }
    }

    /// Runs one statement and returns its rows, bounded by the session's timeout.
    async fn query(&self, action: &'static str, sql: &str) -> Result<Vec<tokio_postgres::Row>, ActionError> {
        self.query_within(action, sql, self.timeout).await
    }

    async fn query_within(
        &self,
        action: &'static str,
        sql: &str,
        timeout: Duration,
    ) -> Result<Vec<tokio_postgres::Row>, ActionError> {
        match tokio::time::timeout(timeout, self.client.query(sql, &[])).await {
            Ok(Ok(rows)) => Ok(rows),
            Ok(Err(e)) => Err(self.fail(action, Failure::of_pg(&e).message)),
            Err(_) => Err(self.fail(action, format!("no answer within {}", humantime::format_duration(timeout)))),
        }
    }

    /// ALTER SYSTEM then pg_reload_conf(), as separate statements (ALTER SYSTEM runs alone).
    async fn set_and_reload(&self, action: &'static str, setting: &str) -> Result<(), ActionError> {
        self.query(action, &format!("ALTER SYSTEM {setting}")).await?;
        self.query(action, "SELECT pg_reload_conf()").await.map(drop)
    }

    /// The node's WAL receiver now (None: it has none, e.g. its sender is gone).
    pub async fn receiver(&self, node: usize, topology: &super::Topology) -> Result<Receiver, ActionError> {
        let rows = self
            .query(
                "read the WAL receiver",
                "SELECT status = 'streaming', (extract(epoch FROM now() - last_msg_receipt_time) * 1000)::int8, \
                 sender_host, sender_port, received_tli FROM pg_stat_wal_receiver",
            )
            .await?;
        let Some(row) = rows.first() else {
            return Ok(Receiver { node, streaming: false, last_message: None, upstream: None });
        };
        let age: Option<i64> = row.get(1);
        Ok(Receiver {
            node,
            streaming: row.get::<_, Option<bool>>(0).unwrap_or(false),
            last_message: age.map(|ms| Duration::from_millis(ms.max(0) as u64)),
            upstream: topology.node_at(row.get(2), row.get(3)),
        })
    }

    /// Stops the node from (re-)attaching to any sender, so its position stops moving; returns
    /// max(received, replayed) position afterwards.
    pub async fn freeze(&self) -> Result<u64, ActionError> {
        self.set_and_reload("freeze", "SET primary_conninfo = ''").await?;
        let rows = self
            .query(
                "freeze",
                "SELECT pg_is_in_recovery(), (greatest(coalesce(pg_last_wal_receive_lsn(), '0/0'), \
                 coalesce(pg_last_wal_replay_lsn(), '0/0')) - '0/0'::pg_lsn)::int8",
            )
            .await?;
        let row = rows.first().ok_or_else(|| self.fail("freeze", "no row".into()))?;
        if !row.get::<_, bool>(0) {
            return Err(self.fail("freeze", "the node is not in recovery (a primary)".into()));
        }
        Ok(row.get::<_, i64>(1).max(0) as u64)
    }

    /// Promotes the node and waits for it; returns its new timeline. A node fenced earlier had
    /// default_transaction_read_only set: a new leader must take writes, so it is reset.
    pub async fn promote(&self, wait: Duration) -> Result<u32, ActionError> {
        let rows = self.query("promote", "SELECT pg_promote(false)").await?;
        if !rows.first().is_some_and(|r| r.get::<_, bool>(0)) {
            return Err(self.fail("promote", "pg_promote could not signal the postmaster".into()));
        }
        // pg_promote(wait => true) looks every 100 ms; promotion mostly takes less than that.
        let deadline = std::time::Instant::now() + wait;
        loop {
            let rows = self.query("promote", "SELECT pg_is_in_recovery()").await?;
            if !rows.first().ok_or_else(|| self.fail("promote", "no row".into()))?.get::<_, bool>(0) {
                break;
            }
            if std::time::Instant::now() >= deadline {
                let waited = humantime::format_duration(wait);
                return Err(self.fail("promote", format!("still in recovery {waited} after pg_promote")));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let rows = self
            .query("promote", "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int")
            .await?;
        let row = rows.first().ok_or_else(|| self.fail("promote", "no row".into()))?;
        self.set_and_reload("promote", "RESET default_transaction_read_only").await?;
        Ok(row.get::<_, i32>(0) as u32)
    }

    /// Points the node's WAL receiver at `leader` (application_name = the node's own name, which
    /// synchronous_standby_names uses).
    pub async fn repoint(&self, config: &Config, leader: &NodeConfig) -> Result<(), ActionError> {
        let conninfo = conninfo(config, leader, &self.node);
        self.set_and_reload("repoint", &format!("SET primary_conninfo = {}", quote_literal(&conninfo))).await
    }

    /// True once the node streams on `timeline` (from whichever address it reports).
    pub async fn streams_on(&self, timeline: u32) -> Result<bool, ActionError> {
        let sql = format!("SELECT status = 'streaming' AND received_tli >= {timeline} FROM pg_stat_wal_receiver");
        let rows = self.query("check streaming", &sql).await?;
        Ok(rows.first().and_then(|r| r.get::<_, Option<bool>>(0)).unwrap_or(false))
    }

    /// Makes a primary that must not write read-only for new transactions and ends its client
    /// backends (their open transactions could still write); returns how many were ended.
    pub async fn fence(&self) -> Result<u64, ActionError> {
        self.set_and_reload("fence", "SET default_transaction_read_only = on").await?;
        let rows = self
            .query(
                "fence",
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() \
                 AND application_name NOT LIKE 'pgcausal-%'",
            )
            .await?;
        Ok(rows.first().map_or(0, |r| r.get::<_, i64>(0).max(0) as u64))
    }

    /// A checkpoint: before a switchover holds anything, so that the one after the hold (and
    /// the old leader's rewind) has little to write.
    pub async fn checkpoint(&self) -> Result<(), ActionError> {
        self.query("checkpoint", "CHECKPOINT").await.map(drop)
    }

    /// A fenced leader's last WAL position: a checkpoint flushes every commit, acknowledged or
    /// asynchronous, and the position after it is what the successor must have replayed.
    pub async fn final_position(&self) -> Result<u64, ActionError> {
        self.checkpoint().await?;
        let rows =
            self.query("read the final position", "SELECT (pg_current_wal_flush_lsn() - '0/0'::pg_lsn)::int8").await?;
        let row = rows.first().ok_or_else(|| self.fail("read the final position", "no row".into()))?;
        Ok(row.get::<_, i64>(0).max(0) as u64)
    }

    /// A follower's replay position (None: the node is no longer in recovery).
    pub async fn replayed(&self) -> Result<Option<u64>, ActionError> {
        let rows = self
            .query(
                "read the replay position",
                "SELECT pg_is_in_recovery(), (coalesce(pg_last_wal_replay_lsn(), '0/0') - '0/0'::pg_lsn)::int8",
            )
            .await?;
        let row = rows.first().ok_or_else(|| self.fail("read the replay position", "no row".into()))?;
        Ok(row.get::<_, bool>(0).then(|| row.get::<_, i64>(1).max(0) as u64))
    }

    /// Lifts `fence`: a leader whose switchover was called off takes writes again.
    pub async fn unfence(&self) -> Result<(), ActionError> {
        self.set_and_reload("unfence", "RESET default_transaction_read_only").await
    }

    /// On the leader: its followers streaming now (application_name, flushed position), its
    /// synchronous_standby_names in effect, and its WAL position.
    pub async fn replication(&self) -> Result<Replication, ActionError> {
        let rows = self
            .query(
                "read replication",
                "SELECT application_name, (coalesce(flush_lsn, '0/0') - '0/0'::pg_lsn)::int8 FROM pg_stat_replication                  WHERE state = 'streaming'",
            )
            .await?;
        let streaming = rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1).max(0) as u64)).collect();
        let rows = self
            .query(
                "read replication",
                "SELECT current_setting('synchronous_standby_names'), (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8",
            )
            .await?;
        let row = rows.first().ok_or_else(|| self.fail("read replication", "no row".into()))?;
        Ok(Replication { streaming, setting: row.get(0), lsn: row.get::<_, i64>(1).max(0) as u64 })
    }

    /// Sets the leader's synchronous_standby_names and waits (up to the session's timeout)
    /// until it is in effect; returns the leader's WAL position then.
    pub async fn set_synchronous(&self, setting: &str) -> Result<u64, ActionError> {
        let action = "set synchronous_standby_names";
        self.set_and_reload(action, &format!("SET synchronous_standby_names = {}", quote_literal(setting))).await?;
        let deadline = std::time::Instant::now() + self.timeout;
        loop {
            let now = self.replication().await?;
            if now.setting == setting {
                return Ok(now.lsn);
            }
            if std::time::Instant::now() >= deadline {
                return Err(self.fail(action, format!("still \"{}\" after pg_reload_conf()", now.setting)));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The node's wal_sender_timeout (0: disabled).
    pub async fn wal_sender_timeout(&self) -> Result<Duration, ActionError> {
        let rows = self
            .query("read wal_sender_timeout", "SELECT setting::int8 FROM pg_settings WHERE name = 'wal_sender_timeout'")
            .await?;
        Ok(Duration::from_millis(rows.first().map_or(0, |r| r.get::<_, i64>(0).max(0) as u64)))
    }

    /// What the failover login lacks to promote, repoint and fence this node (empty: nothing).
    pub async fn missing_permissions(&self) -> Result<Vec<&'static str>, ActionError> {
        let rows = self
            .query(
                "check permissions",
                "SELECT rolsuper, \
                 has_function_privilege('pg_promote(boolean, integer)', 'EXECUTE'), \
                 has_function_privilege('pg_reload_conf()', 'EXECUTE'), \
                 pg_has_role(current_user, 'pg_signal_backend', 'MEMBER'), \
                 pg_has_role(current_user, 'pg_read_all_stats', 'MEMBER'), \
                 has_parameter_privilege('primary_conninfo', 'ALTER SYSTEM'), \
                 has_parameter_privilege('default_transaction_read_only', 'ALTER SYSTEM') \
                 FROM pg_roles WHERE rolname = current_user",
            )
            .await?;
        let row = rows.first().ok_or_else(|| self.fail("check permissions", "the login has no pg_roles row".into()))?;
        if row.get::<_, bool>(0) {
            return Ok(Vec::new());
        }
        let needs = [
            "EXECUTE on pg_promote(boolean, integer)",
            "EXECUTE on pg_reload_conf()",
            "membership in pg_signal_backend",
            "membership in pg_read_all_stats",
            "ALTER SYSTEM on PARAMETER primary_conninfo",
            "ALTER SYSTEM on PARAMETER default_transaction_read_only",
        ];
        Ok(needs.iter().enumerate().filter(|(i, _)| !row.get::<_, bool>(i + 1)).map(|(_, n)| *n).collect())
    }
}

/// What a leader reports of its replication.
#[derive(Debug, Clone)]
pub struct Replication {
    /// Followers streaming now: application_name and flushed position.
    pub streaming: Vec<(String, u64)>,
    /// synchronous_standby_names in effect.
    pub setting: String,
    /// pg_current_wal_lsn().
    pub lsn: u64,
}

/// The primary_conninfo of a follower of `leader`: libpq keyword values, single-quoted.
pub fn conninfo(config: &Config, leader: &NodeConfig, application_name: &str) -> String {
    let (user, password) = config.replication_login();
    let value = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    format!(
        "host={} port={} user={} password={} application_name={}",
        value(&leader.host),
        leader.port,
        value(user),
        value(password),
        value(application_name)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conninfo_quotes_every_value() {
        let text =
            "[[nodes]]\nname = \"a\"\nhost = \"db'1\"\nport = 5\n[[users]]\nname = \"u\"\npassword = \"p\\\\q'r\"\n";
        let config = Config::parse(std::path::Path::new("t.toml"), text).unwrap();
        let info = conninfo(&config, &config.nodes[0], "node 2");
        assert_eq!(info, r"host='db\'1' port=5 user='u' password='p\\q\'r' application_name='node 2'");
    }
}
