//! Server connection pools, one per (node, database, user), on deadpool's managed pool.

use super::conn::{BackendError, Login, ServerConn};
use crate::config::Config;
use crate::metrics::NodeMetrics;
use deadpool::managed::{self, Metrics, PoolError, QueueMode, RecycleError, RecycleResult, TimeoutType};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub type Pool = managed::Pool<Manager>;
pub type Lease = managed::Object<Manager>;

/// Creates, checks and resets server connections for one (node, database, user).
pub struct Manager {
    login: Login,
    connect_timeout: Duration,
    reset_query: String,
    metrics: Arc<NodeMetrics>,
}

impl managed::Manager for Manager {
    /// Boxed: deadpool moves its objects several times per lease, so they should be a pointer.
    type Type = Box<ServerConn>;
    type Error = BackendError;

    async fn create(&self) -> Result<Box<ServerConn>, BackendError> {
        // Boxed: a connect's state is large and rare; inline it would sit in every session's future.
        let result = Box::pin(ServerConn::connect(&self.login, self.connect_timeout)).await;
        self.metrics.connect_result(result.is_ok());
        let mut conn = result?;
        conn.gauge = Some(self.metrics.server_connection());
        Ok(Box::new(conn))
    }

    /// Runs on every lease, so it reads no clock: lifetimes are enforced by `reap_idle`.
    async fn recycle(&self, conn: &mut Box<ServerConn>, _: &Metrics) -> RecycleResult<BackendError> {
        // Anything the server sent while idle (a FATAL, a notification) makes it unfit to share.
        if conn.has_pending_input() {
            return Err(RecycleError::message("unsolicited server input"));
        }
        if conn.needs_reset {
            // Bounded here rather than by deadpool's recycle timeout, which would wrap every lease.
            match Box::pin(tokio::time::timeout(self.connect_timeout, conn.run(&self.reset_query))).await {
                Ok(result) => result?,
                Err(_) => return Err(RecycleError::message("reset query timed out")),
            }
            // The reset query may have dropped them (DISCARD ALL does).
            conn.statements.clear();
            crate::frontend::sql_prepared::server_discarded(&mut conn.sql_statements);
            conn.settings.clear();
            conn.needs_reset = false;
        }
        Ok(())
    }
}

/// Leases a connection from `pool`, waiting at most `limit`, and says how long it waited when it
/// was not served at once (no timer and no clock read for a lease an idle connection serves).
pub async fn lease(pool: &Pool, limit: Duration) -> (Result<Lease, PoolError<BackendError>>, Option<Duration>) {
    let mut get = std::pin::pin!(pool.get());
    let first = std::future::poll_fn(|cx| match get.as_mut().poll(cx) {
        std::task::Poll::Ready(result) => std::task::Poll::Ready(Some(result)),
        std::task::Poll::Pending => std::task::Poll::Ready(None),
    })
    .await;
    if let Some(result) = first {
        return (result, None);
    }
    let started = std::time::Instant::now();
    let result = tokio::time::timeout(limit, get).await.unwrap_or(Err(PoolError::Timeout(TimeoutType::Wait)));
    (result, Some(started.elapsed()))
}

/// All pools of one node, created on first use of each (database, user).
pub struct NodePools {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub metrics: Arc<NodeMetrics>,
    pools: Mutex<HashMap<(String, String), Pool>>,
}

/// The pools of every configured node, indexed like `config.nodes`.
pub struct Pools {
    pub nodes: Vec<NodePools>,
    size: usize,
    pub acquire_timeout: Duration,
    connect_timeout: Duration,
    lifetime: Duration,
    idle_timeout: Duration,
    reset_query: String,
}

impl Pools {
    pub fn new(config: &Config) -> Pools {
        let nodes = config
            .nodes
            .iter()
            .map(|n| NodePools {
                name: n.name.clone(),
                host: n.host.clone(),
                port: n.port,
                metrics: Arc::new(NodeMetrics::new(&n.name)),
                pools: Mutex::new(HashMap::new()),
            })
            .collect();
        Pools {
            nodes,
            size: config.pool.size,
            acquire_timeout: config.pool.acquire_timeout,
            connect_timeout: config.pool.connect_timeout,
            lifetime: config.pool.lifetime,
            idle_timeout: config.pool.idle_timeout,
            reset_query: config.pool.reset_query.clone(),
        }
    }

    /// The pool for (node, database, user); called once per session and node, not per query.
    pub fn pool(&self, node: usize, database: &str, user: &str, password: &str) -> Pool {
        let n = &self.nodes[node];
        let mut pools = n.pools.lock().expect("pool map poisoned");
        let key = (database.to_string(), user.to_string());
        if let Some(p) = pools.get(&key) {
            return p.clone();
        }
        let manager = Manager {
            login: Login {
                host: n.host.clone(),
                port: n.port,
                user: user.to_string(),
                password: password.to_string(),
                database: database.to_string(),
            },
            connect_timeout: self.connect_timeout,
            reset_query: self.reset_query.clone(),
            metrics: n.metrics.clone(),
        };
        let pool = Pool::builder(manager)
            .max_size(self.size)
            // The wait is bounded by `lease`, which arms a timer only when there is a wait.
            .wait_timeout(None)
            // Most recently used first: a warm working set, and the rest can idle out.
            .queue_mode(QueueMode::Lifo)
            .create_timeout(Some(self.connect_timeout))
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .expect("runtime and timeouts are set");
        pools.insert(key, pool.clone());
        pool
    }

    /// Closes idle connections past `idle_timeout` or `lifetime`; run periodically (a busy
    /// connection past its lifetime goes at the first reap that finds it idle).
    pub fn reap_idle(&self) {
        for n in &self.nodes {
            let pools: Vec<Pool> = n.pools.lock().expect("pool map poisoned").values().cloned().collect();
            for p in pools {
                p.retain(|conn, m| m.last_used() < self.idle_timeout && conn.created.elapsed() < self.lifetime);
            }
        }
    }

    /// Drops every idle connection to a node (it went down or changed role).
    pub fn drain_node(&self, node: usize) {
        let pools: Vec<Pool> = self.nodes[node].pools.lock().expect("pool map poisoned").values().cloned().collect();
        for p in pools {
            p.retain(|_, _| false);
        }
    }
}
