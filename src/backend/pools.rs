//! Every node's connection pools, one per (database, user) made on first use, and their upkeep:
//! closing idle and old connections, draining a node that changed role, and cutting every
//! connection of a node that went down or is fenced.

use super::abort::NodeSockets;
use super::conn::Login;
use super::pool::{CoarseClock, Pool, PoolConfig};
use super::server_secret::ServerSecret;
use crate::config::Config;
use crate::metrics::NodeMetrics;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// All pools of one node.
pub struct NodePools {
    pub name: String,
    pub host: String,
    pub port: u16,
    /// TLS to it, as its `[[nodes]]` entry said when the slot was made.
    pub tls: super::tls::ServerTls,
    pub metrics: Arc<NodeMetrics>,
    pools: Mutex<HashMap<(String, String), Pool>>,
    /// Units of work leased here (read by the admin console; Prometheus has its own counter).
    units: AtomicU64,
    /// The sockets of every open connection to this node, for `Pools::abort_node`.
    sockets: Arc<NodeSockets>,
    /// A reload took the node out of the config: its connections close as they come back.
    removed: AtomicBool,
}

impl NodePools {
    /// Every pool of this node, in no particular order.
    pub fn all(&self) -> Vec<Pool> {
        self.pools.lock().expect("pool map poisoned").values().cloned().collect()
    }

    /// Server connections open (or opening) to this node, over all its pools.
    pub fn connections(&self) -> usize {
        self.all().iter().map(|p| p.stats().size()).sum()
    }

    /// Units of work on this node now: connections leased (or being opened for a lease) and
    /// sessions waiting for one, over all its pools.
    pub fn units_in_flight(&self) -> usize {
        self.all().iter().map(|p| p.stats()).map(|s| s.active + s.waiting).sum()
    }

    /// A unit of work was leased a connection here.
    pub fn unit_routed(&self) {
        self.units.fetch_add(1, Ordering::Relaxed);
    }

    pub fn units_routed(&self) -> u64 {
        self.units.load(Ordering::Relaxed)
    }

    /// True once a reload removed the node.
    pub fn removed(&self) -> bool {
        self.removed.load(Ordering::Relaxed)
    }

    fn new(node: &crate::config::NodeConfig) -> NodePools {
        NodePools {
            name: node.name.clone(),
            host: node.host.clone(),
            tls: node.server_tls(),
            port: node.port,
            metrics: Arc::new(NodeMetrics::new(&node.name)),
            pools: Mutex::new(HashMap::new()),
            units: AtomicU64::new(0),
            sockets: Arc::default(),
            removed: AtomicBool::new(false),
        }
    }
}

/// The pools of every configured node, indexed like `config.nodes` (append-only: a reload adds
/// slots and marks removed ones, so a node's index never changes).
pub struct Pools {
    pub nodes: boxcar::Vec<NodePools>,
    /// Size, timeouts and secrets as RELOAD last set them (pools made later start with them).
    live: Mutex<Live>,
    acquire_timeout_ms: AtomicU64,
    connect_timeout: Duration,
    reset_query: String,
    clock: Arc<CoarseClock>,
}

impl Pools {
    pub fn new(config: &Config) -> Pools {
        let nodes = config.nodes.iter().map(NodePools::new).collect();
        Pools {
            nodes,
            live: Mutex::new(Live::from(config)),
            acquire_timeout_ms: AtomicU64::new(config.pool.acquire_timeout.as_millis() as u64),
            connect_timeout: config.pool.connect_timeout,
            reset_query: config.pool.reset_query.clone(),
            clock: Arc::new(CoarseClock::new()),
        }
    }

    /// A slot for a node a reload added; returns its index.
    pub fn add(&self, node: &crate::config::NodeConfig) -> usize {
        self.nodes.push(NodePools::new(node))
    }

    /// A reload removed `node`: no new connections, idle ones close now, leased ones when their
    /// unit ends (the size limit drops to 0); nothing in flight is cut.
    pub fn remove(&self, node: usize) {
        let n = &self.nodes[node];
        n.removed.store(true, Ordering::Relaxed);
        for pool in n.all() {
            pool.set_max_size(0);
            pool.close_idle(|_, _| false);
        }
        let why: Arc<str> = "the node was removed from the configuration".into();
        n.all().iter().for_each(|pool| pool.abort_waiters(&why));
    }

    /// Every node's pools in index order, removed ones included (they drain).
    pub fn iter(&self) -> impl Iterator<Item = &NodePools> {
        self.nodes.iter().map(|(_, n)| n)
    }

    /// The pool for (node, database, user); called once per session and node, not per query.
    /// `secret` is the session's: a new pool starts with it, an existing one learns a SCRAM
    /// passthrough ClientKey from it.
    pub fn pool(&self, node: usize, database: &str, user: &str, secret: &ServerSecret) -> Pool {
        let n = &self.nodes[node];
        let size = if n.removed() { 0 } else { self.live().size };
        let mut pools = n.pools.lock().expect("pool map poisoned");
        let key = (database.to_string(), user.to_string());
        let pool = pools.entry(key).or_insert_with(|| {
            Pool::new(PoolConfig {
                node: n.name.clone(),
                login: Login {
                    host: n.host.clone(),
                    port: n.port,
                    user: user.to_string(),
                    secret: secret.clone(),
                    database: database.to_string(),
                    tls: n.tls.clone(),
                },
                max_size: size,
                connect_timeout: self.connect_timeout,
                reset_query: self.reset_query.clone(),
                metrics: n.metrics.clone(),
                gauges: crate::metrics::PoolGauges::new(&n.name, database, user),
                clock: self.clock.clone(),
                sockets: n.sockets.clone(),
            })
        });
        pool.learn_secret(secret);
        pool.clone()
    }

    /// Closes idle connections past `idle_timeout` or `lifetime`; run every second or so, which is
    /// also the resolution of idle ages (a busy connection past its lifetime goes at the first
    /// reap that finds it idle).
    pub fn reap_idle(&self) {
        self.clock.tick();
        let (idle_timeout, lifetime) = {
            let live = self.live();
            (live.idle_timeout, live.lifetime)
        };
        for pool in self.iter().flat_map(NodePools::all) {
            pool.close_idle(|conn, idle| idle < idle_timeout && conn.created.elapsed() < lifetime);
        }
    }

    /// How long a session waits for a free connection (RELOAD may change it).
    pub fn acquire_timeout(&self) -> Duration {
        Duration::from_millis(self.acquire_timeout_ms.load(Ordering::Relaxed))
    }

    fn live(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().expect("pool settings poisoned")
    }

    /// RELOAD: new size, timeouts and secrets for every pool, existing and future. A user no
    /// longer configured keeps its pools (its clients stay); it cannot log in again.
    pub fn reconfigure(&self, config: &Config) {
        *self.live() = Live::from(config);
        self.acquire_timeout_ms.store(config.pool.acquire_timeout.as_millis() as u64, Ordering::Relaxed);
        for pool in self.iter().filter(|n| !n.removed()).flat_map(NodePools::all) {
            let (_, user) = pool.database_and_user();
            if let Some(u) = config.user(user) {
                pool.reconfigure(config.pool.size, ServerSecret::configured(u));
            }
        }
    }

    /// Publishes every pool's gauges (active, idle, waiting, size limit); run with `reap_idle`.
    pub fn publish_stats(&self) {
        self.iter().flat_map(NodePools::all).for_each(|pool| pool.publish_stats());
    }

    /// Closes every idle connection to a node (it went down or changed role).
    pub fn drain_node(&self, node: usize) {
        for pool in self.nodes[node].all() {
            pool.close_idle(|_, _| false);
        }
    }

    /// Cuts every connection to a node at once (it went down, or is fenced): idle ones close,
    /// sessions waiting for one are sent away, and each leased one is shut down under its
    /// session, which sees the end of the stream at its next read (even from a frozen server)
    /// and re-runs its read elsewhere or fails its unit with class 08 naming `reason`.
    /// Returns how many connections were cut.
    pub fn abort_node(&self, node: usize, reason: &str) -> usize {
        self.drain_node(node);
        let n = &self.nodes[node];
        let why: Arc<str> = reason.into();
        n.all().iter().for_each(|pool| pool.abort_waiters(&why));
        let cut = n.sockets.cut_all(reason);
        if cut > 0 {
            tracing::info!(node = %n.name, connections = cut, reason, "cut the server connections of a node");
            metrics::counter!(crate::metrics::SERVER_CONNECTIONS_CUT, "node" => n.name.clone()).increment(cut as u64);
        }
        cut
    }
}

/// The pool settings RELOAD may change.
struct Live {
    size: usize,
    idle_timeout: Duration,
    lifetime: Duration,
}

impl From<&Config> for Live {
    fn from(config: &Config) -> Live {
        Live { size: config.pool.size, idle_timeout: config.pool.idle_timeout, lifetime: config.pool.lifetime }
    }
}
