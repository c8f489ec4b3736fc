//! What every session shares: config, pools, topology, positions, classifier, cancel keys.

use super::cancel::CancelRegistry;
use super::clients::Clients;
use super::lifecycle::Lifecycle;
use crate::backend::Pools;
use crate::config::Config;
use crate::consistency::floor::Balancer;
use crate::consistency::Positions;
use crate::route::Classifier;
use crate::secret::{ScramVerifier, Secret};
use crate::topology::Topology;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;

/// Everything sessions share; built once at start, changed afterwards only through atomics and
/// swapped snapshots (RELOAD).
pub struct Shared {
    /// The running configuration: sessions take a snapshot at login (RELOAD swaps it).
    config: ArcSwap<Config>,
    /// The file it was read from (RELOAD reads it again); None when built in code (the demo).
    pub config_path: Option<PathBuf>,
    pub pools: Arc<Pools>,
    pub topology: Arc<Topology>,
    pub cancels: Arc<CancelRegistry>,
    /// SCRAM verifiers per user: configured, or derived once per plaintext password (4096
    /// PBKDF2 rounds is too slow per login). md5-hash users have none.
    scram: ArcSwap<HashMap<String, Arc<ScramVerifier>>>,
    /// Open client connections, logged in or not (for `proxy.max_client_connections`).
    pub connections: AtomicUsize,
    /// Logged-in clients, for the admin console and the signals their sessions take.
    pub clients: Clients,
    /// Paused, stopping: what operators steer.
    pub lifecycle: Lifecycle,
    /// True while the accept loop takes new clients (`/ready` says so): set by `Proxy::run` when
    /// it starts; graceful shutdown sets it false before it stops accepting.
    pub accepting: Arc<AtomicBool>,
    /// SQL classification shared by all sessions (fingerprint-keyed cache).
    pub classifier: Arc<Classifier>,
    /// Picks the follower for each read unit.
    pub balancer: Balancer,
    /// Every node's latest WAL position, for session floors.
    pub positions: Arc<Positions>,
    /// DDL sent through the proxy: prepared statements made before are not shared after it.
    pub ddl: super::ddl::DdlLog,
    /// Reads sent to the leader for consistency, by reason.
    pub fallbacks: crate::consistency::floor::FallbackMetrics,
    /// Failover attempts (SHOW FAILOVERS) and the way PROMOTE reaches the driver.
    pub failovers: Arc<crate::topology::failover::Failovers>,
    /// Each node's monitor and position poller (a reload starts and stops them).
    pub node_tasks: crate::membership::NodeTasks,
    /// Client-facing TLS (its certificate is read again at every RELOAD).
    pub tls: super::tls::ClientTls,
    /// Secrets of users not in the config, read with `[auth] query`.
    pub auth_cache: super::auth_query::AuthCache,
}

impl Shared {
    /// Builds the shared state around a config; the rest of the fields as given.
    #[allow(clippy::too_many_arguments)]
    pub fn new(parts: SharedParts) -> Shared {
        let scram = scram_secrets(&parts.config);
        Shared {
            config: ArcSwap::from_pointee(parts.config),
            config_path: parts.config_path,
            pools: Arc::new(parts.pools),
            topology: parts.topology,
            cancels: Arc::new(CancelRegistry::default()),
            scram: ArcSwap::from_pointee(scram),
            connections: AtomicUsize::new(0),
            clients: Clients::default(),
            lifecycle: Lifecycle::default(),
            accepting: parts.accepting,
            classifier: parts.classifier,
            balancer: parts.balancer,
            positions: parts.positions,
            ddl: Default::default(),
            fallbacks: crate::consistency::floor::FallbackMetrics::new(),
            failovers: parts.failovers,
            node_tasks: Default::default(),
            tls: parts.tls,
            auth_cache: Default::default(),
        }
    }

    /// The running configuration (a snapshot: RELOAD may swap in a newer one meanwhile).
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// The SCRAM verifier of a configured user.
    pub fn scram_verifier(&self, user: &str) -> Option<Arc<ScramVerifier>> {
        self.scram.load().get(user).cloned()
    }

    /// RELOAD: the new configuration takes effect for new logins and sessions.
    pub fn swap_config(&self, config: Config) {
        let old = self.config.load();
        // Only changed passwords pay PBKDF2 again.
        let mut scram = HashMap::new();
        for user in &config.users {
            let kept = old
                .user(&user.name)
                .filter(|u| u.password == user.password)
                .and_then(|_| self.scram_verifier(&user.name));
            if let Some(verifier) = kept.or_else(|| scram_verifier(&user.secret())) {
                scram.insert(user.name.clone(), verifier);
            }
        }
        self.scram.store(Arc::new(scram));
        self.config.store(Arc::new(config));
    }
}

/// What `Shared::new` is built from.
pub struct SharedParts {
    pub config: Config,
    pub config_path: Option<PathBuf>,
    pub pools: Pools,
    pub topology: Arc<Topology>,
    pub classifier: Arc<Classifier>,
    pub balancer: Balancer,
    pub positions: Arc<Positions>,
    pub accepting: Arc<AtomicBool>,
    pub failovers: Arc<crate::topology::failover::Failovers>,
    pub tls: super::tls::ClientTls,
}

fn scram_secrets(config: &Config) -> HashMap<String, Arc<ScramVerifier>> {
    config.users.iter().filter_map(|u| Some((u.name.clone(), scram_verifier(&u.secret())?))).collect()
}

fn scram_verifier(secret: &Secret) -> Option<Arc<ScramVerifier>> {
    match secret {
        Secret::Plain(password) => Some(Arc::new(ScramVerifier::generate(password))),
        Secret::Scram(verifier) => Some(Arc::new(verifier.clone())),
        Secret::Md5(_) => None,
    }
}
