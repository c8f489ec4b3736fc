//! The TOML configuration: types, defaults, and validation with errors that name file, key and reason.

use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {reason}")]
    Read { file: PathBuf, reason: String },
    #[error("{file}: {reason}")]
    Syntax { file: PathBuf, reason: String },
    #[error("{file}: key `{key}`: {reason}")]
    Invalid { file: PathBuf, key: String, reason: String },
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub proxy: ProxyConfig,
    #[serde(default)]
    pub pool: PoolConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub monitor: MonitorConfig,
    #[serde(default)]
    pub routing: RoutingConfig,
    #[serde(default)]
    pub consistency: ConsistencyConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub failover: FailoverConfig,
    #[serde(default)]
    pub replication: ReplicationConfig,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub auth: AuthQueryConfig,
    #[serde(default)]
    pub nodes: Vec<NodeConfig>,
    #[serde(default)]
    pub users: Vec<UserConfig>,
}

/// The admin console: database `pgcausal`, for these users (their passwords and auth methods
/// are their `[[users]]` entries).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub users: Vec<String>,
}

/// Auth passthrough: clients not in `[[users]]` log in with the secret the leader holds for them.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthQueryConfig {
    /// Returns (user name, secret) for `$1`, e.g. `SELECT usename, passwd FROM pg_shadow WHERE
    /// usename = $1`; run on the leader. Unset: only configured users log in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Who runs it (default: the monitor login). pg_shadow needs a superuser; a SECURITY DEFINER
    /// function over it lets a plain user run it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Database it runs in (default: `monitor.database`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// How long an answer (a secret, or "no such user") is kept before the leader is asked again.
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
}

impl Default for AuthQueryConfig {
    fn default() -> Self {
        Self { query: None, user: None, password: None, database: None, cache_ttl: Duration::from_secs(30) }
    }
}

/// Client-facing TLS: the certificate pgcausal presents, and whether clients must use it.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// PEM CA certificates: clients must present a certificate they signed.
    pub ca_file: Option<PathBuf>,
    /// Default: `allow` when a certificate is configured, else `disable`.
    pub client_mode: Option<ClientTlsMode>,
}

/// Whether clients may, or must, talk TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientTlsMode {
    /// SSLRequest is answered 'N': plain text only.
    Disable,
    /// TLS when the client asks (SSLRequest or direct), plain text otherwise.
    Allow,
    /// TLS only: a plaintext startup is refused with FATAL 28000.
    Require,
}

impl TlsConfig {
    /// The mode in force.
    pub fn mode(&self) -> ClientTlsMode {
        self.client_mode.unwrap_or(match self.cert_file {
            Some(_) => ClientTlsMode::Allow,
            None => ClientTlsMode::Disable,
        })
    }
}

/// Who drives a failover when the leader dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FailoverMode {
    /// pgcausal confirms the leader is dead, promotes the most advanced follower and repoints the rest.
    Auto,
    /// pgcausal detects and reports; the operator runs `PROMOTE [node]` on the admin console.
    Manual,
    /// pgcausal only follows promotions made by others (timeline-safe).
    Off,
}

/// Failover: detection bounds, the hold of units that need the leader, and the logins used to
/// promote, repoint and fence nodes.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailoverConfig {
    pub mode: FailoverMode,
    /// Continuous leader failure before it is confirmed dead (and only if no follower still
    /// receives from it).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Units that need the leader wait this long while none is known, then fail with 57P03.
    #[serde(with = "humantime_serde")]
    pub hold_timeout: Duration,
    /// How long a repointed follower has to stream from the new leader before it is reported
    /// as needing a rejoin.
    #[serde(with = "humantime_serde")]
    pub repoint_timeout: Duration,
    /// SWITCHOVER: how long the leader's units in flight may run before they are ended (57P01),
    /// and how long the successor may take to replay the leader's last WAL before the
    /// switchover is called off.
    #[serde(with = "humantime_serde")]
    pub switchover_timeout: Duration,
    /// Login for pg_promote, ALTER SYSTEM, pg_reload_conf and pg_terminate_backend; defaults to
    /// the monitor login.
    pub user: Option<String>,
    pub password: Option<String>,
    /// Login repointed followers stream with (their primary_conninfo); defaults to the failover login.
    pub replication_user: Option<String>,
    pub replication_password: Option<String>,
    /// Shell command run to make a fenced or diverged node a follower of the leader (see
    /// deploy/rejoin-local.sh); None: such nodes wait for an operator.
    pub rejoin_command: Option<String>,
    /// How long one run of `rejoin_command` may take before it is killed.
    #[serde(with = "humantime_serde")]
    pub rejoin_timeout: Duration,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        Self {
            mode: FailoverMode::Auto,
            timeout: Duration::from_secs(2),
            hold_timeout: Duration::from_secs(15),
            repoint_timeout: Duration::from_secs(10),
            switchover_timeout: Duration::from_secs(10),
            user: None,
            password: None,
            replication_user: None,
            replication_password: None,
            rejoin_command: None,
            rejoin_timeout: Duration::from_secs(300),
        }
    }
}

/// How commits wait for followers: pgcausal keeps the leader's `synchronous_standby_names`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// pgcausal leaves `synchronous_standby_names` as the servers have it.
    #[default]
    Off,
    /// ANY k of the streaming followers; fewer than k streaming: the set shrinks to those that
    /// do, down to none (writes go on unprotected, logged).
    On,
    /// ANY k of every follower, streaming or not: writes wait rather than run unprotected.
    Strict,
}

impl SyncMode {
    pub fn name(self) -> &'static str {
        match self {
            SyncMode::Off => "off",
            SyncMode::On => "on",
            SyncMode::Strict => "strict",
        }
    }
}

/// Synchronous replication managed by pgcausal.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationConfig {
    pub synchronous: SyncMode,
    /// k in `ANY k (...)`: how many followers must have flushed a commit before it is acknowledged.
    pub synchronous_count: usize,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig { synchronous: SyncMode::Off, synchronous_count: 1 }
    }
}

/// The database name that opens the admin console instead of a server database.
pub const ADMIN_DATABASE: &str = "pgcausal";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// A server connection is leased per transaction (or per statement outside one).
    Transaction,
    /// A server connection is leased for the client's whole session.
    Session,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    pub pool_mode: PoolMode,
    /// Connections beyond this are refused with SQLSTATE 53300.
    pub max_client_connections: usize,
    /// Logged-in clients per user beyond this are refused with 53300 (0: no limit; a user's own
    /// `max_client_connections` overrides it). The admin console is not counted.
    pub max_client_connections_per_user: usize,
    /// Logged-in clients per database beyond this are refused with 53300 (0: no limit).
    pub max_client_connections_per_database: usize,
    /// Largest client message accepted (bytes); larger length prefixes are a protocol violation.
    pub max_message_size: usize,
    /// Largest startup packet accepted (bytes, PostgreSQL's own limit by default): a client
    /// that has not logged in may not make the proxy allocate more.
    pub max_startup_packet_size: usize,
    /// How long a new client may take to start up and authenticate.
    #[serde(with = "humantime_serde")]
    pub client_login_timeout: Duration,
    /// A logged-in client that sends nothing between transactions this long is closed with
    /// 57P05 (0: never). Checked once a second.
    #[serde(with = "humantime_serde")]
    pub client_idle_timeout: Duration,
    /// A client that sends nothing inside a transaction this long is closed with 25P03 and its
    /// transaction rolled back, freeing its server connection (0: never). Checked once a second.
    #[serde(with = "humantime_serde")]
    pub idle_in_transaction_timeout: Duration,
    /// Worker threads. 1 (default) runs everything on one thread, like PgBouncer: no cross-thread
    /// wakeups, ~20% less CPU per query than a multi-threaded runtime on a 2-core host. 0 means
    /// one per CPU (a dedicated many-core proxy host).
    pub threads: usize,
    /// On SIGTERM, SIGINT or SHUTDOWN: how long units in flight may take to finish before the
    /// proxy exits anyway.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:6432".parse().expect("valid default"),
            pool_mode: PoolMode::Transaction,
            max_client_connections: 10_000,
            max_client_connections_per_user: 0,
            max_client_connections_per_database: 0,
            max_message_size: 256 * 1024 * 1024,
            max_startup_packet_size: crate::protocol::startup::MAX_STARTUP_LEN,
            client_login_timeout: Duration::from_secs(15),
            client_idle_timeout: Duration::ZERO,
            idle_in_transaction_timeout: Duration::ZERO,
            threads: 1,
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// Maximum server connections per (node, database, user).
    pub size: usize,
    /// How long a client waits for a free server connection before SQLSTATE 53300.
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Idle server connections older than this are closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Server connections are closed at their first return to the pool after this age.
    #[serde(with = "humantime_serde")]
    pub lifetime: Duration,
    /// Run on a server connection before another client may use it, in session mode.
    pub reset_query: String,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            size: 20,
            acquire_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(600),
            lifetime: Duration::from_secs(3600),
            reset_query: "DISCARD ALL".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Prometheus /metrics listener; empty string disables it.
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { listen: "127.0.0.1:9930".into() }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorConfig {
    /// Login for health probes; defaults to the first [[users]] entry.
    pub user: Option<String>,
    pub password: Option<String>,
    pub database: String,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// A probe that takes longer than this counts as a failure.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Probes in a row that must time out before a node counts as down: one late answer on a
    /// loaded host is not a dead node. An error (refused, reset, FATAL) counts at once.
    pub timeouts_to_down: u32,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            user: None,
            password: None,
            database: "postgres".into(),
            interval: Duration::from_millis(200),
            timeout: Duration::from_millis(700),
            timeouts_to_down: 2,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaderReads {
    /// Reads never run on the leader; with no eligible follower they fail (SQLSTATE 57P03).
    Never,
    /// Reads run on the leader only when no follower is eligible.
    Fallback,
    /// The leader takes its share of reads like a follower.
    Always,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    LeastOutstanding,
    RoundRobin,
    Random,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Send reads to followers (transaction pooling only; session pooling stays on the leader).
    pub enabled: bool,
    pub leader_reads: LeaderReads,
    pub balance: Balance,
    /// A follower whose replay position is further behind the leader than this leaves rotation.
    pub max_lag_bytes: u64,
    /// A follower that has not replayed what it received for this long leaves rotation.
    #[serde(with = "humantime_serde")]
    pub max_lag: Duration,
    /// Functions that always send a statement to the leader (in addition to volatile ones).
    pub write_functions: Vec<String>,
    /// Functions that never force the leader, whatever pg_proc says (e.g. random).
    pub read_only_functions: Vec<String>,
    /// How often the volatile-function list is reloaded from the leader.
    #[serde(with = "humantime_serde")]
    pub catalog_refresh: Duration,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            leader_reads: LeaderReads::Fallback,
            balance: Balance::LeastOutstanding,
            max_lag_bytes: 16 * 1024 * 1024,
            max_lag: Duration::from_secs(10),
            write_functions: Vec::new(),
            read_only_functions: Vec::new(),
            catalog_refresh: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnTimeout {
    /// Read on the leader (always fresh).
    Leader,
    /// Fail the read with SQLSTATE 57P03, naming the floor and the best follower's position.
    Error,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteLsn {
    Probe,
    SameConnection,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsistencyConfig {
    /// Default session level: eventual, monotonic, read_your_writes, causal, strong.
    pub level: crate::consistency::Level,
    /// How long a read waits for a follower to reach the session's floor.
    #[serde(with = "humantime_serde")]
    pub wait_timeout: Duration,
    pub on_timeout: OnTimeout,
    /// How often every node's WAL position is sampled (waiting reads also ask on demand).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How a write's commit position is learned: `probe` (a coalesced leader probe that started
    /// after the commit, shared by all sessions) or `same_connection` (a query on the write's own
    /// connection before it returns to the pool).
    pub write_lsn: WriteLsn,
    /// Default bound on staleness for eventual reads; unset means unbounded.
    #[serde(with = "humantime_serde")]
    pub max_staleness: Option<Duration>,
}

impl Default for ConsistencyConfig {
    fn default() -> Self {
        Self {
            level: crate::consistency::Level::Causal,
            wait_timeout: Duration::from_millis(50),
            on_timeout: OnTimeout::Leader,
            poll_interval: Duration::from_millis(10),
            write_lsn: WriteLsn::Probe,
            max_staleness: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub name: String,
    pub host: String,
    pub port: u16,
    /// Failover preference among followers at the same WAL position (higher first); 0 = never promote.
    #[serde(default = "default_priority")]
    pub priority: u32,
    /// The node's data directory, for the rejoin command when it runs on the node's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<String>,
    /// TLS to this node, for the pools and the monitor, failover and catalog logins alike.
    #[serde(default)]
    pub tls: ServerTlsMode,
    /// PEM CA certificates the node's certificate must chain to (verify-full).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Set in the running config when a reload took the node out: its slot stays (node indexes
    /// never move while the proxy runs), it is never routed to or probed again.
    #[serde(skip)]
    pub removed: bool,
}

impl NodeConfig {
    pub fn new(name: &str, host: &str, port: u16) -> NodeConfig {
        NodeConfig {
            name: name.into(),
            host: host.into(),
            port,
            priority: default_priority(),
            data_dir: None,
            tls: ServerTlsMode::default(),
            ca_file: None,
            removed: false,
        }
    }

    /// Its TLS settings, as the server connections use them.
    pub fn server_tls(&self) -> crate::backend::tls::ServerTls {
        crate::backend::tls::ServerTls { mode: self.tls, ca_file: self.ca_file.clone() }
    }
}

/// TLS to a server, as libpq's sslmode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerTlsMode {
    /// Plain text (default).
    #[default]
    Disable,
    /// TLS when the server accepts it, plain text otherwise; the certificate is not checked.
    Prefer,
    /// TLS or no connection; the certificate is not checked.
    Require,
    /// TLS, the certificate chained to `ca_file` and naming the node's host.
    VerifyFull,
}

impl ServerTlsMode {
    pub fn label(self) -> &'static str {
        match self {
            ServerTlsMode::Disable => "disable",
            ServerTlsMode::Prefer => "prefer",
            ServerTlsMode::Require => "require",
            ServerTlsMode::VerifyFull => "verify-full",
        }
    }
}

fn default_priority() -> u32 {
    100
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
pub enum AuthMethod {
    #[default]
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    #[serde(rename = "md5")]
    Md5,
    #[serde(rename = "trust")]
    Trust,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    /// Checks the client: plaintext, a SCRAM-SHA-256 verifier or an md5 hash (as in pg_authid).
    /// Plaintext or an md5 hash also logs in to the servers when `server_password` is unset.
    pub password: String,
    /// The plaintext password pgcausal logs in to the servers with, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_password: Option<String>,
    /// How clients authenticate to the proxy.
    #[serde(default)]
    pub auth: AuthMethod,
    /// Logged-in clients of this user beyond this are refused with 53300 (overrides
    /// `proxy.max_client_connections_per_user`; 0: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_client_connections: Option<usize>,
}

impl UserConfig {
    /// What `password` holds. `validate` refuses a malformed verifier; a config built in code
    /// gets PostgreSQL's reading of one, a plaintext password.
    pub fn secret(&self) -> Secret {
        Secret::parse(&self.password).unwrap_or_else(|_| Secret::Plain(self.password.clone()))
    }

    /// A plaintext password for logins that need one (monitor, failover, replication):
    /// `server_password`, else `password` when it is plaintext.
    pub fn plaintext_server_password(&self) -> Option<&str> {
        match (&self.server_password, self.secret()) {
            (Some(p), _) => Some(p),
            (None, Secret::Plain(_)) => Some(&self.password),
            (None, _) => None,
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Read { file: path.to_owned(), reason: e.to_string() })?;
        Self::parse(path, &text)
    }

    /// Parses and validates; `file` only names the source in errors.
    pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigError> {
        let value: toml::Value = toml::from_str(text)
            .map_err(|e| ConfigError::Syntax { file: file.to_owned(), reason: e.to_string().trim_end().to_string() })?;
        let config: Config = serde_path_to_error::deserialize(value).map_err(|e| ConfigError::Invalid {
            file: file.to_owned(),
            key: e.path().to_string(),
            reason: e.inner().to_string(),
        })?;
        config.validate().map_err(|(key, reason)| ConfigError::Invalid { file: file.to_owned(), key, reason })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let bad = |key: String, reason: &str| Err((key, reason.to_string()));
        if self.nodes.is_empty() {
            return bad("nodes".into(), "at least one [[nodes]] entry is required");
        }
        for (i, n) in self.nodes.iter().enumerate() {
            if n.name.is_empty() {
                return bad(format!("nodes[{i}].name"), "must not be empty");
            }
            if n.host.is_empty() {
                return bad(format!("nodes[{i}].host"), "must not be empty");
            }
            if n.port == 0 {
                return bad(format!("nodes[{i}].port"), "must be 1-65535");
            }
            if self.nodes[..i].iter().any(|m| m.name == n.name) {
                return bad(format!("nodes[{i}].name"), "duplicate node name");
            }
            if n.tls == ServerTlsMode::VerifyFull && n.ca_file.is_none() {
                return bad(
                    format!("nodes[{i}].ca_file"),
                    "tls = \"verify-full\" needs the CA that signed the node's certificate",
                );
            }
        }
        if self.users.is_empty() {
            return bad("users".into(), "at least one [[users]] entry is required");
        }
        for (i, u) in self.users.iter().enumerate() {
            if u.name.is_empty() {
                return bad(format!("users[{i}].name"), "must not be empty");
            }
            if self.users[..i].iter().any(|m| m.name == u.name) {
                return bad(format!("users[{i}].name"), "duplicate user name");
            }
            let secret = Secret::parse(&u.password).map_err(|e| (format!("users[{i}].password"), e.to_string()))?;
            match (secret, u.auth) {
                (Secret::Scram(_), AuthMethod::Md5) => {
                    return bad(
                        format!("users[{i}].password"),
                        "a SCRAM verifier cannot check an md5 login: use auth = \"scram-sha-256\", or an md5 hash or plaintext password",
                    )
                }
                (Secret::Md5(_), AuthMethod::ScramSha256) => {
                    return bad(
                        format!("users[{i}].password"),
                        "an md5 hash cannot check a SCRAM login: use auth = \"md5\", or a SCRAM verifier or plaintext password",
                    )
                }
                (Secret::Scram(_), AuthMethod::Trust) if u.server_password.is_none() => {
                    return bad(
                        format!("users[{i}].server_password"),
                        "needed with a SCRAM verifier and auth = \"trust\": no client proof to pass on to the servers",
                    )
                }
                _ => {}
            }
        }
        if self.monitor.user.is_none() && self.users[0].plaintext_server_password().is_none() {
            return bad(
                "monitor.user".into(),
                &format!(
                    "the monitor, failover and replication logins default to users[0] (\"{}\"), whose password is a hash: \
                     set [monitor] user and password, or users[0].server_password",
                    self.users[0].name
                ),
            );
        }
        for (i, name) in self.admin.users.iter().enumerate() {
            if self.user(name).is_none() {
                return bad(format!("admin.users[{i}]"), &format!("\"{name}\" has no [[users]] entry (its password)"));
            }
        }
        if self.auth.user.is_some() != self.auth.password.is_some() {
            return bad("auth.password".into(), "auth.user and auth.password go together");
        }
        if self.auth.query.as_deref().is_some_and(|q| !q.contains("$1")) {
            return bad("auth.query".into(), "must take the user name as $1");
        }
        if self.auth.query.is_some() && self.auth.cache_ttl.is_zero() {
            return bad("auth.cache_ttl".into(), "must be greater than zero");
        }
        if self.pool.size == 0 {
            return bad("pool.size".into(), "must be at least 1");
        }
        if self.proxy.max_message_size < 1024 {
            return bad("proxy.max_message_size".into(), "must be at least 1024 bytes");
        }
        if !(64..=1024 * 1024).contains(&self.proxy.max_startup_packet_size) {
            return bad("proxy.max_startup_packet_size".into(), "must be between 64 bytes and 1 MiB");
        }
        if self.consistency.poll_interval.is_zero() {
            return bad("consistency.poll_interval".into(), "must be greater than zero");
        }
        if self.routing.catalog_refresh.is_zero() {
            return bad("routing.catalog_refresh".into(), "must be greater than zero");
        }
        if self.monitor.interval.is_zero() {
            return bad("monitor.interval".into(), "must be greater than zero");
        }
        if self.monitor.timeouts_to_down == 0 {
            return bad("monitor.timeouts_to_down".into(), "must be at least 1");
        }
        if self.monitor.user.is_some() != self.monitor.password.is_some() {
            return bad("monitor.password".into(), "monitor.user and monitor.password must be set together");
        }
        if self.failover.user.is_some() != self.failover.password.is_some() {
            return bad("failover.password".into(), "failover.user and failover.password must be set together");
        }
        if self.failover.replication_user.is_some() != self.failover.replication_password.is_some() {
            return bad(
                "failover.replication_password".into(),
                "failover.replication_user and failover.replication_password must be set together",
            );
        }
        if self.replication.synchronous_count == 0 {
            return bad("replication.synchronous_count".into(), "must be at least 1");
        }
        if self.failover.timeout.is_zero() {
            return bad("failover.timeout".into(), "must be greater than zero");
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            return bad("tls.key_file".into(), "tls.cert_file and tls.key_file must be set together");
        }
        if self.tls.mode() != ClientTlsMode::Disable && self.tls.cert_file.is_none() {
            return bad("tls.client_mode".into(), "allow and require need tls.cert_file and tls.key_file");
        }
        if !self.metrics.listen.is_empty() && self.metrics.listen.parse::<SocketAddr>().is_err() {
            return bad("metrics.listen".into(), "not an address like 127.0.0.1:9930");
        }
        Ok(())
    }

    /// The nodes in the config (not removed by a reload), with their indexes.
    pub fn active_nodes(&self) -> impl Iterator<Item = (usize, &NodeConfig)> {
        self.nodes.iter().enumerate().filter(|(_, n)| !n.removed)
    }

    /// The index of the node named `name` (removed ones aside).
    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.active_nodes().find(|(_, n)| n.name == name).map(|(i, _)| i)
    }

    /// This config as its file would say it: removed node slots left out.
    pub fn as_written(&self) -> Config {
        let mut written = self.clone();
        written.nodes.retain(|n| !n.removed);
        written
    }

    pub fn user(&self, name: &str) -> Option<&UserConfig> {
        self.users.iter().find(|u| u.name == name)
    }

    /// The login the node monitors use: `[monitor]` or the first user.
    pub fn monitor_login(&self) -> (&str, &str) {
        match (&self.monitor.user, &self.monitor.password) {
            (Some(u), Some(p)) => (u, p),
            // `validate` refuses a config whose first user has no plaintext password.
            _ => (&self.users[0].name, self.users[0].plaintext_server_password().unwrap_or_default()),
        }
    }

    /// The login `[auth] query` runs as: `[auth] user`/`password`, or the monitor login.
    pub fn auth_query_login(&self) -> (&str, &str) {
        match (&self.auth.user, &self.auth.password) {
            (Some(u), Some(p)) => (u, p),
            _ => self.monitor_login(),
        }
    }

    /// The login that promotes, repoints and fences nodes: `[failover]` or the monitor login.
    pub fn failover_login(&self) -> (&str, &str) {
        match (&self.failover.user, &self.failover.password) {
            (Some(u), Some(p)) => (u, p),
            _ => self.monitor_login(),
        }
    }

    /// The login repointed followers stream with: `[failover] replication_*` or the failover login.
    pub fn replication_login(&self) -> (&str, &str) {
        match (&self.failover.replication_user, &self.failover.replication_password) {
            (Some(u), Some(p)) => (u, p),
            _ => self.failover_login(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[proxy]
listen = "127.0.0.1:7432"
pool_mode = "session"
[pool]
acquire_timeout = "2s"
[[nodes]]
name = "pg1"
host = "127.0.0.1"
port = 55432
[[users]]
name = "app"
password = "secret"
auth = "md5"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("pgcausal.toml"), text)
    }

    #[test]
    fn parses_a_good_file_with_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.proxy.pool_mode, PoolMode::Session);
        assert_eq!(c.pool.acquire_timeout, Duration::from_secs(2));
        assert_eq!(c.pool.size, 20);
        assert_eq!(c.users[0].auth, AuthMethod::Md5);
        assert_eq!(c.metrics.listen, "127.0.0.1:9930");
        assert_eq!(c.monitor_login(), ("app", "secret"));
    }

    #[test]
    fn errors_name_file_and_key() {
        let cases = [
            (GOOD.replace("pool_mode = \"session\"", "pool_mode = \"sessions\""), "proxy.pool_mode"),
            (GOOD.replace("listen = \"127.0.0.1:7432\"", "listen = \"nowhere\""), "proxy.listen"),
            (GOOD.replace("port = 55432", "port = 70000"), "nodes[0].port"),
            (GOOD.replace("port = 55432", "port = 0"), "nodes[0].port"),
            (GOOD.replace("acquire_timeout = \"2s\"", "acquire_timeout = \"soon\""), "pool.acquire_timeout"),
            (GOOD.replace("auth = \"md5\"", "auth = \"kerberos\""), "users[0].auth"),
            (GOOD.replace("[pool]", "[pool]\nsize = 0"), "pool.size"),
            (GOOD.replace("[pool]", "[pool]\nsise = 3"), "pool"),
            (format!("{GOOD}\n[monitor]\ntimeouts_to_down = 0\n"), "monitor.timeouts_to_down"),
            (format!("{GOOD}\n[admin]\nusers = [\"app\", \"ops\"]\n"), "admin.users[1]"),
            (format!("{GOOD}\n[failover]\nmode = \"sometimes\"\n"), "failover.mode"),
            (format!("{GOOD}\n[failover]\nuser = \"ops\"\n"), "failover.password"),
            (format!("{GOOD}\n[failover]\ntimeout = \"0s\"\n"), "failover.timeout"),
        ];
        for (text, key) in cases {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.starts_with("pgcausal.toml: key `"), "{err}");
            assert!(err.contains(&format!("`{key}")), "expected key {key} in: {err}");
        }
        let err = parse("[proxy\nlisten=1").unwrap_err().to_string();
        assert!(err.starts_with("pgcausal.toml: ") && err.contains("line"), "{err}");
        let err = parse("[proxy]\n").unwrap_err().to_string();
        assert!(err.contains("key `nodes`"), "{err}");
    }

    use crate::secret::PG15_VERIFIER_OF_PW as VERIFIER;

    /// GOOD with users[0]'s password and auth lines replaced.
    fn with_user(password: &str, extra: &str) -> String {
        GOOD.replace("password = \"secret\"\nauth = \"md5\"", &format!("password = \"{password}\"\n{extra}"))
    }

    #[test]
    fn passwords_may_be_verifiers_or_md5_hashes() {
        let c = parse(&with_user(VERIFIER, "server_password = \"pw\"")).unwrap();
        assert!(matches!(c.users[0].secret(), Secret::Scram(_)));
        assert_eq!(c.monitor_login(), ("app", "pw"), "the monitor logs in with server_password");
        let md5 = crate::secret::md5_hash("app", "secret");
        let c = parse(&with_user(&md5, "auth = \"md5\"\n[monitor]\nuser = \"mon\"\npassword = \"m\"")).unwrap();
        assert!(matches!(c.users[0].secret(), Secret::Md5(_)));
        assert_eq!(c.monitor_login(), ("mon", "m"));
    }

    #[test]
    fn bad_or_mismatched_secrets_name_the_key_and_the_fix() {
        let md5 = crate::secret::md5_hash("app", "secret");
        let monitor = "[monitor]\nuser = \"mon\"\npassword = \"m\"";
        let cases = [
            (with_user("SCRAM-SHA-256$4096:c2FsdA==", ""), "users[0].password", "no `$` before the keys"),
            (
                with_user(VERIFIER, &format!("auth = \"md5\"\n{monitor}")),
                "users[0].password",
                "cannot check an md5 login",
            ),
            (with_user(&md5, monitor), "users[0].password", "cannot check a SCRAM login"),
            (
                with_user(VERIFIER, &format!("auth = \"trust\"\n{monitor}")),
                "users[0].server_password",
                "no client proof",
            ),
            (with_user(VERIFIER, ""), "monitor.user", "set [monitor] user and password, or users[0].server_password"),
        ];
        for (text, key, reason) in cases {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.starts_with(&format!("pgcausal.toml: key `{key}`: ")), "expected key {key} in: {err}");
            assert!(err.contains(reason), "expected {reason:?} in: {err}");
        }
    }
}
