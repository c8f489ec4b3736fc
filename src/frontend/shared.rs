//! What every session shares: config, pools, topology, positions, classifier, cancel keys.

use super::auth::ScramSecret;
use super::cancel::CancelRegistry;
use crate::backend::Pools;
use crate::config::Config;
use crate::consistency::Positions;
use crate::route::Classifier;
use crate::topology::balance::Balancer;
use crate::topology::Topology;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;

/// Everything sessions share; built once at start, immutable afterwards except through atomics.
pub struct Shared {
    pub config: Config,
    pub pools: Pools,
    pub topology: Arc<Topology>,
    pub cancels: Arc<CancelRegistry>,
    /// SCRAM secrets per user, derived once (4096 PBKDF2 rounds is too slow per login).
    pub scram: HashMap<String, ScramSecret>,
    pub clients: AtomicUsize,
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
}
