//! Every node's connection pools, one per (database, user) made on first use, and their upkeep:
//! closing idle and old connections, and draining a node that went down or changed role.

use super::conn::Login;
use super::pool::{CoarseClock, Pool, PoolConfig};
use crate::config::Config;
use crate::metrics::NodeMetrics;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// All pools of one node.
pub struct NodePools {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub metrics: Arc<NodeMetrics>,
    pools: Mutex<HashMap<(String, String), Pool>>,
}

impl NodePools {
    fn all(&self) -> Vec<Pool> {
        self.pools.lock().expect("pool map poisoned").values().cloned().collect()
    }
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
    clock: Arc<CoarseClock>,
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
            clock: Arc::new(CoarseClock::new()),
        }
    }

    /// The pool for (node, database, user); called once per session and node, not per query.
    pub fn pool(&self, node: usize, database: &str, user: &str, password: &str) -> Pool {
        let n = &self.nodes[node];
        let mut pools = n.pools.lock().expect("pool map poisoned");
        let key = (database.to_string(), user.to_string());
        let pool = pools.entry(key).or_insert_with(|| {
            Pool::new(PoolConfig {
                login: Login {
                    host: n.host.clone(),
                    port: n.port,
                    user: user.to_string(),
                    password: password.to_string(),
                    database: database.to_string(),
                },
                max_size: self.size,
                connect_timeout: self.connect_timeout,
                reset_query: self.reset_query.clone(),
                metrics: n.metrics.clone(),
                gauges: crate::metrics::PoolGauges::new(&n.name, database, user),
                clock: self.clock.clone(),
            })
        });
        pool.clone()
    }

    /// Closes idle connections past `idle_timeout` or `lifetime`; run every second or so, which is
    /// also the resolution of idle ages (a busy connection past its lifetime goes at the first
    /// reap that finds it idle).
    pub fn reap_idle(&self) {
        self.clock.tick();
        for pool in self.nodes.iter().flat_map(NodePools::all) {
            pool.close_idle(|conn, idle| idle < self.idle_timeout && conn.created.elapsed() < self.lifetime);
        }
    }

    /// Publishes every pool's gauges (active, idle, waiting, size limit); run with `reap_idle`.
    pub fn publish_stats(&self) {
        self.nodes.iter().flat_map(NodePools::all).for_each(|pool| pool.publish_stats());
    }

    /// Closes every idle connection to a node (it went down or changed role).
    pub fn drain_node(&self, node: usize) {
        for pool in self.nodes[node].all() {
            pool.close_idle(|_, _| false);
        }
    }
}
