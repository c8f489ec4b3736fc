//! The running proxy: building what sessions share (config, pools, topology, cancel keys) and the accept loop.

use crate::backend::Pools;
use crate::config::Config;
use crate::consistency::floor::Balancer;
use crate::consistency::Positions;
use crate::frontend::shared::{Shared, SharedParts};
use crate::route::{Classifier, FunctionCatalog, FunctionOverrides};
use crate::topology::{catalog, LagLimits, Topology};
use anyhow::Context;
use futures_util::FutureExt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};

/// A bound, not yet serving proxy.
pub struct Proxy {
    shared: Arc<Shared>,
    listener: TcpListener,
    /// Monitors, pollers, catalog refresh and reaper on the control thread; stopped with the proxy.
    _background: crate::control::Tasks,
}

impl Proxy {
    /// Binds the client listener and the metrics/health listener, and starts the background
    /// work; `config_path` is where RELOAD and SIGHUP read the configuration again (None: it
    /// cannot be reloaded).
    pub async fn bind(config: Config, config_path: Option<std::path::PathBuf>) -> anyhow::Result<Proxy> {
        // Before any metric handle is made: handles made without a recorder count nowhere.
        let metrics = match config.metrics.listen.is_empty() {
            true => None,
            false => Some((config.metrics.listen.parse::<SocketAddr>()?, crate::metrics::install_recorder()?)),
        };
        raise_fd_limit(config.proxy.max_client_connections);
        let listen = config.proxy.listen;
        let listener =
            TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen} (proxy.listen)"))?;
        let limits =
            LagLimits { max_bytes: config.routing.max_lag_bytes, max_ms: config.routing.max_lag.as_millis() as u64 };
        let topology = Arc::new(Topology::new(&config.nodes, limits));
        let overrides = FunctionOverrides {
            write_functions: config.routing.write_functions.clone(),
            read_only_functions: config.routing.read_only_functions.clone(),
        };
        let positions = Arc::new(Positions::new(config.nodes.len()));
        let mut background = crate::control::Tasks::default();
        let accepting = Arc::new(AtomicBool::new(false));
        if let Some((addr, handle)) = metrics {
            let endpoints = crate::http::Endpoints::new(handle, topology.clone(), accepting.clone());
            background.add(
                crate::http::serve(addr, endpoints)
                    .with_context(|| format!("cannot listen on {addr} (metrics.listen)"))?,
            );
        }
        let classifier = Arc::new(Classifier::new(10_000, Arc::new(FunctionCatalog::with_overrides(&overrides))));
        catalog::spawn(Arc::new(config.clone()), topology.clone(), Arc::downgrade(&classifier), &mut background);
        crate::frontend::admin::start_counting();
        let (failovers, orders) = crate::topology::failover::Failovers::new();
        let tls = crate::frontend::tls::ClientTls::new(&config.tls)?;
        let shared = Arc::new(Shared::new(SharedParts {
            tls,
            pools: Pools::new(&config),
            topology: topology.clone(),
            classifier,
            balancer: Balancer::new(config.routing.balance, config.nodes.len()),
            positions: positions.clone(),
            config,
            config_path,
            accepting,
            failovers: Arc::new(failovers),
        }));
        for i in 0..shared.config().nodes.len() {
            crate::membership::start_node(&shared, i);
        }
        crate::failover_driver::spawn(&shared, orders, &mut background);
        let reaper = Arc::downgrade(&shared);
        background.add(crate::control::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            let mut idle = crate::frontend::clients::IdleWatch::default();
            loop {
                tick.tick().await;
                match reaper.upgrade() {
                    Some(shared) => {
                        shared.pools.reap_idle();
                        shared.pools.publish_stats();
                        shared.clients.publish_states();
                        let proxy = &shared.config().proxy;
                        let (idle_limit, tx_limit) = (proxy.client_idle_timeout, proxy.idle_in_transaction_timeout);
                        idle.check(&shared.clients, idle_limit, tx_limit, std::time::Instant::now());
                        shared.topology.snapshot().publish_metrics(shared.pools.iter().map(|n| &*n.metrics));
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

    /// Accepts clients until SIGTERM, SIGINT or the console's SHUTDOWN (and SIGHUP when
    /// `hangup` is [`Hangup::Stop`]: the demo's terminal closed), then shuts down gracefully.
    /// SIGHUP with [`Hangup::Reload`] reads the config file again.
    pub async fn run(self, hangup: Hangup) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler");
        let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
        tracing::info!(listen = %self.listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "accepting clients");
        self.shared.accepting.store(true, Ordering::Release);
        let cause = loop {
            let accepted = tokio::select! {
                a = self.listener.accept() => a,
                _ = term.recv() => break "SIGTERM",
                _ = interrupt.recv() => break "SIGINT",
                _ = self.shared.lifecycle.stop_requested() => break "SHUTDOWN",
                _ = hup.recv() => match hangup {
                    Hangup::Stop => break "SIGHUP",
                    Hangup::Reload => {
                        let _ = crate::frontend::admin::reload::reload(&self.shared);
                        continue;
                    }
                },
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
            tokio::spawn(client_task(stream, peer, self.shared.clone()));
        };
        let Proxy { shared, listener, _background } = self;
        shared.accepting.store(false, Ordering::Release); // /ready says so from here on
        drop(listener); // new connections are refused from here on
        let stop = async {
            tokio::select! {
                _ = term.recv() => {}
                _ = interrupt.recv() => {}
            }
        };
        drain(&shared, cause, stop).await;
    }
}

/// One client connection's task, from accept to close. Every client holds its future for
/// its whole life: its size is what an idle client costs (see the test).
fn client_task(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) -> impl Future<Output = ()> + Send {
    let count = shared.connections.fetch_add(1, Ordering::Relaxed) + 1;
    let gauge = crate::metrics::GaugeGuard::new(metrics::gauge!(crate::metrics::CLIENT_CONNECTIONS));
    // A combinator, not an async block: awaiting a captured future would keep room for it twice.
    // The last net: the stages inside catch their own panics and tell the client.
    let serve = crate::frontend::serve_client(stream, peer, shared.clone(), count);
    crate::frontend::containment::contained("client", serve).map(move |_| {
        drop(gauge);
        shared.connections.fetch_sub(1, Ordering::Relaxed);
    })
}

/// What SIGHUP does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hangup {
    /// Read the config file again (a server's `systemctl reload`).
    Reload,
    /// Stop, like SIGTERM (the demo's terminal closed: its cluster must still be stopped).
    Stop,
}

/// Graceful shutdown: clients close at their next idle point (a unit in flight finishes
/// first), for up to `proxy.shutdown_timeout`; a second SIGTERM or SIGINT (`stop`) ends it at once.
async fn drain(shared: &Shared, cause: &str, stop: impl std::future::Future<Output = ()>) {
    let timeout = shared.config().proxy.shutdown_timeout;
    let open = shared.connections.load(Ordering::Relaxed);
    tracing::info!(cause, clients = open, ?timeout, "shutting down: no new connections; clients close once idle");
    shared.lifecycle.set_stopping();
    shared.clients.signal_all(crate::frontend::clients::signal::SHUTDOWN);
    let deadline = std::time::Instant::now() + timeout;
    let drained = async {
        while shared.connections.load(Ordering::Relaxed) > 0 && std::time::Instant::now() < deadline {
            crate::control::sleep(std::time::Duration::from_millis(10)).await;
        }
    };
    tokio::select! {
        _ = drained => {}
        _ = stop => tracing::warn!("second stop signal: exiting now"),
    }
    let left = shared.connections.load(Ordering::Relaxed);
    if left > 0 {
        tracing::warn!(clients = left, "shutdown timeout: closing the clients still running");
    } else {
        tracing::info!("every client closed; exiting");
    }
}

/// Raises the open-file limit to its hard limit where allowed (each client and server connection
/// is a descriptor; distributions start processes at a soft limit of 1024), and says so.
fn raise_fd_limit(max_clients: usize) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            limit.rlim_cur = before;
        }
    }
    if limit.rlim_cur != before {
        tracing::info!(from = before, to = limit.rlim_cur, "raised the open-file limit");
    }
    // A client holds one descriptor, its unit one more; what is left is for pools and monitors.
    if (limit.rlim_cur as usize) < max_clients.saturating_mul(2) {
        tracing::warn!(open_file_limit = limit.rlim_cur, max_client_connections = max_clients, "the open-file limit is below twice proxy.max_client_connections: connections may fail with \"too many open files\" first");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_client_task_is_small() {
        let text = "[proxy]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"\"\n\
                    [[nodes]]\nname = \"n\"\nhost = \"127.0.0.1\"\nport = 1\n\
                    [[users]]\nname = \"u\"\npassword = \"p\"\n";
        let config = Config::parse(std::path::Path::new("test.toml"), text).unwrap();
        let proxy = Proxy::bind(config, None).await.unwrap();
        let _client = std::net::TcpStream::connect(proxy.local_addr().unwrap()).unwrap();
        let (stream, peer) = proxy.listener.accept().await.unwrap();
        let task = client_task(stream, peer, proxy.shared.clone());
        let size = std::mem::size_of_val(&task);
        // Every connected client holds this for its whole life: 2,256 bytes in a release build
        // (11,320 while `contained` and `timeout` held their work twice; 2,960 before the waits
        // of a lease and a read plan were boxed and the session borrowed its login and socket).
        assert!(size <= 3 * 1024, "a client task is {size} bytes");
    }
}
