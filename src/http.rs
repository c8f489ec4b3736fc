//! The HTTP listener on `[metrics] listen`, served on the control thread: `/metrics` (the
//! Prometheus page), `/health` (the process serves), `/ready` (clients can be served) and
//! `/ready/writes` (writes can be served); anything else is 404.

use crate::topology::{Snapshot, Topology};
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::{JoinHandle, JoinSet};

/// How often recorded histogram samples are folded in when nobody scrapes (the exporter's own
/// listener did this every 5 s; without it they pile up until the next render).
const UPKEEP: Duration = Duration::from_secs(5);

/// What the endpoints answer from.
pub struct Endpoints {
    metrics: PrometheusHandle,
    topology: Arc<Topology>,
    /// True while the proxy accepts clients (set by `Proxy::run`).
    accepting: Arc<AtomicBool>,
    process: metrics_process::Collector,
}

impl Endpoints {
    pub fn new(metrics: PrometheusHandle, topology: Arc<Topology>, accepting: Arc<AtomicBool>) -> Endpoints {
        let process = metrics_process::Collector::default();
        process.describe();
        Endpoints { metrics, topology, accepting, process }
    }

    /// The answer to one request.
    pub fn respond(&self, method: &Method, path: &str) -> Response<Full<Bytes>> {
        if method != Method::GET && method != Method::HEAD {
            let mut response = reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "method not allowed\n".into());
            response.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        match path {
            "/metrics" => {
                self.process.collect();
                reply(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", self.metrics.render())
            }
            "/health" => reply(StatusCode::OK, "application/json", "{\"healthy\":true}\n".into()),
            "/ready" | "/ready/writes" => {
                let accepting = self.accepting.load(Ordering::Acquire);
                readiness(not_ready(accepting, &self.topology.snapshot(), path == "/ready/writes"))
            }
            _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
        }
    }
}

/// Why clients (`writes`: clients that write) cannot be served now, or None when they can: the
/// proxy accepts clients, and a leader is known and no failover runs (for reads, an up follower
/// in rotation will do).
pub fn not_ready(accepting: bool, snapshot: &Snapshot, writes: bool) -> Option<&'static str> {
    if !accepting {
        Some("not accepting clients")
    } else if writes && snapshot.phase.running() {
        Some("a failover is running")
    } else if snapshot.leader.is_some() {
        None
    } else if writes {
        Some("no leader is known")
    } else if snapshot.followers.is_empty() {
        Some("no leader is known and no follower is in rotation")
    } else {
        None
    }
}

fn readiness(not_ready: Option<&str>) -> Response<Full<Bytes>> {
    match not_ready {
        None => reply(StatusCode::OK, "application/json", "{\"ready\":true}\n".into()),
        // The reasons are fixed texts without quotes or backslashes: no escaping needed.
        Some(reason) => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "application/json",
            format!("{{\"ready\":false,\"reason\":\"{reason}\"}}\n"),
        ),
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Binds `addr` now (a taken port fails the start) and serves it on the control thread until
/// the returned task is aborted, which also closes its open connections.
pub fn serve(addr: SocketAddr, endpoints: Endpoints) -> anyhow::Result<JoinHandle<()>> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let endpoints = Arc::new(endpoints);
    Ok(crate::control::spawn(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => return tracing::error!(error = %e, "metrics listener failed"),
        };
        let mut connections = JoinSet::new();
        let mut upkeep = tokio::time::interval(UPKEEP);
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        connections.spawn(connection(stream, endpoints.clone()));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics listener: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                _ = upkeep.tick() => endpoints.metrics.run_upkeep(),
            }
        }
    }))
}

async fn connection(stream: tokio::net::TcpStream, endpoints: Arc<Endpoints>) {
    let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
        let response = endpoints.respond(request.method(), request.uri().path());
        async move { Ok::<_, std::convert::Infallible>(response) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .await;
    if let Err(e) = served {
        tracing::debug!(error = %e, "metrics listener: connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeConfig;
    use crate::topology::{LagLimits, NodeState, Role};

    fn state(role: Role) -> NodeState {
        NodeState { up: true, role, timeline: 1, lsn: 100, ..Default::default() }
    }

    #[test]
    fn ready_needs_accepting_and_a_node_for_reads_or_the_leader_for_writes() {
        let topology = Topology::new(
            &[NodeConfig::new("a", "127.0.0.1", 1), NodeConfig::new("b", "127.0.0.1", 2)],
            LagLimits { max_bytes: 1000, max_ms: 1000 },
        );
        let reasons = |accepting| {
            let s = topology.snapshot();
            (not_ready(accepting, &s, false), not_ready(accepting, &s, true))
        };
        assert_eq!(
            reasons(true),
            (Some("no leader is known and no follower is in rotation"), Some("no leader is known"))
        );
        topology.update(1, state(Role::Standby));
        assert_eq!(reasons(true), (None, Some("no leader is known")));
        topology.update(0, state(Role::Primary));
        assert_eq!(reasons(true), (None, None));
        assert_eq!(reasons(false), (Some("not accepting clients"), Some("not accepting clients")));
        topology.update(1, NodeState::default());
        assert_eq!(reasons(true), (None, None));
    }

    #[test]
    fn paths_methods_and_bodies() {
        let handle = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder().handle();
        let topology =
            Arc::new(Topology::new(&[NodeConfig::new("a", "127.0.0.1", 1)], LagLimits { max_bytes: 0, max_ms: 0 }));
        let endpoints = Endpoints::new(handle, topology, Arc::new(AtomicBool::new(true)));
        let status = |method: Method, path: &str| endpoints.respond(&method, path).status();
        assert_eq!(status(Method::GET, "/metrics"), StatusCode::OK);
        assert_eq!(status(Method::HEAD, "/health"), StatusCode::OK);
        assert_eq!(status(Method::GET, "/ready"), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(status(Method::GET, "/ready/writes"), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(status(Method::GET, "/"), StatusCode::NOT_FOUND);
        assert_eq!(status(Method::GET, "/metrics/x"), StatusCode::NOT_FOUND);
        let post = endpoints.respond(&Method::POST, "/metrics");
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(post.headers()[ALLOW], "GET, HEAD");
    }

    #[test]
    fn unready_answers_are_503_with_a_json_reason() {
        let response = readiness(Some("no leader is known"));
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(readiness(None).status(), StatusCode::OK);
    }
}
