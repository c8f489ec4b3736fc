//! The running proxy: building what sessions share (config, pools, topology, cancel keys) and the accept loop.

use crate::backend::Pools;
use crate::config::Config;
use crate::consistency::Positions;
use crate::frontend::auth::ScramSecret;
use crate::frontend::cancel::CancelRegistry;
use crate::frontend::shared::Shared;
use crate::route::{Classifier, FunctionCatalog, FunctionOverrides};
use crate::topology::balance::Balancer;
use crate::topology::{catalog, monitor, LagLimits, Topology};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;

/// A bound, not yet serving proxy.
pub struct Proxy {
    shared: Arc<Shared>,
    listener: TcpListener,
    /// Monitors, pollers, catalog refresh and reaper on the control thread; stopped with the proxy.
    _background: crate::control::Tasks,
}

impl Proxy {
    /// Binds the client listener and the metrics/health listener, and starts the node monitors.
    pub async fn bind(config: Config) -> anyhow::Result<Proxy> {
        // Before any metric handle is made: handles made without a recorder count nowhere.
        let metrics = match config.metrics.listen.is_empty() {
            true => None,
            false => Some((config.metrics.listen.parse::<SocketAddr>()?, crate::metrics::install_recorder()?)),
        };
        let listener = TcpListener::bind(config.proxy.listen).await?;
        let limits =
            LagLimits { max_bytes: config.routing.max_lag_bytes, max_ms: config.routing.max_lag.as_millis() as u64 };
        let topology = Arc::new(Topology::new(config.nodes.len(), limits));
        let overrides = FunctionOverrides {
            write_functions: config.routing.write_functions.clone(),
            read_only_functions: config.routing.read_only_functions.clone(),
        };
        let positions = Arc::new(Positions::new(config.nodes.len()));
        let mut background = crate::control::Tasks::default();
        let accepting = Arc::new(AtomicBool::new(false));
        if let Some((addr, handle)) = metrics {
            let endpoints = crate::http::Endpoints::new(handle, topology.clone(), accepting.clone());
            background.add(crate::http::serve(addr, endpoints)?);
        }
        positions.spawn_pollers(&config, config.consistency.poll_interval, &mut background);
        let classifier = Arc::new(Classifier::new(10_000, Arc::new(FunctionCatalog::with_overrides(&overrides))));
        catalog::spawn(Arc::new(config.clone()), topology.clone(), Arc::downgrade(&classifier), &mut background);
        let scram = config.users.iter().map(|u| (u.name.clone(), ScramSecret::new(&u.password))).collect();
        let shared = Arc::new(Shared {
            pools: Pools::new(&config),
            topology: topology.clone(),
            cancels: Arc::new(CancelRegistry::default()),
            scram,
            clients: AtomicUsize::new(0),
            accepting,
            classifier,
            balancer: Balancer::new(config.routing.balance, config.nodes.len()),
            positions: positions.clone(),
            ddl: Default::default(),
            fallbacks: crate::consistency::floor::FallbackMetrics::new(),
            config,
        });
        let weak = Arc::downgrade(&shared);
        monitor::spawn_all(
            &shared.config,
            topology,
            Arc::new(move |node, _before, after| {
                // A node that went down or changed role must not hand out its old connections.
                if let Some(shared) = weak.upgrade() {
                    let _ = after;
                    shared.pools.drain_node(node);
                }
            }),
            &mut background,
        );
        let reaper = Arc::downgrade(&shared);
        background.add(crate::control::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tick.tick().await;
                match reaper.upgrade() {
                    Some(shared) => {
                        shared.pools.reap_idle();
                        shared.pools.publish_stats();
                        crate::metrics::nodes(
                            &shared.topology.snapshot(),
                            shared.pools.nodes.iter().map(|n| &*n.metrics),
                        );
                        crate::metrics::classifier(&shared.classifier.stats());
                    }
                    None => return,
                }
            }
        }));
        Ok(Proxy { shared, listener, _background: background })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts clients until `shutdown` resolves; each client runs in its own task.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        tracing::info!(listen = %self.listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "accepting clients");
        self.shared.accepting.store(true, Ordering::Release);
        loop {
            let accepted = tokio::select! {
                a = self.listener.accept() => a,
                _ = &mut shutdown => return,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    crate::control::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let shared = self.shared.clone();
            tokio::spawn(async move {
                let count = shared.clients.fetch_add(1, Ordering::Relaxed) + 1;
                let gauge = crate::metrics::GaugeGuard::new(metrics::gauge!(crate::metrics::CLIENT_CONNECTIONS));
                crate::frontend::serve_client(stream, peer, &shared, count).await;
                drop(gauge);
                shared.clients.fetch_sub(1, Ordering::Relaxed);
            });
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM, and on SIGHUP when `hangup` (the demo's terminal closed: its
/// cluster must still be stopped). Signals are registered at the first poll.
pub async fn shutdown_signal(hangup: bool) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut hup = if hangup { Some(signal(SignalKind::hangup()).expect("SIGHUP handler")) } else { None };
    let hung_up = async {
        match hup.as_mut() {
            Some(h) => h.recv().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = hung_up => {}
    }
    tracing::info!("shutting down");
}
