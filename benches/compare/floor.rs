//! The tokio floor: a pass-through proxy with nothing of pgcausal in it, to measure what one tokio
//! task per client costs by itself (the design pgcausal, PgDog and pgcat share).
//!
//! Each client gets its own connection to the leader and `tokio::io::copy_bidirectional` between
//! the two, on a current-thread runtime with only the I/O driver, as pgcausal's data path runs:
//! no framing, no routing, no pooling. Every query still costs what the runtime charges for two
//! readiness waits, two wakeups, two reads and two writes, so no proxy built this way can cost
//! less per query than this one.

use crate::procs::{free_port, Service};
use crate::targets::{Env, Target};
use std::time::Duration;

/// The argument that makes the bench binary serve as the floor proxy instead of benchmarking.
pub const SERVE_ARG: &str = "--tokio-floor-serve";

/// Serves as the floor proxy when the process was started with `SERVE_ARG LISTEN_PORT UPSTREAM_PORT`;
/// returns false otherwise. Runs until killed (the bench stops it with SIGTERM).
pub fn serve_if_asked() -> bool {
    let args: Vec<String> = std::env::args().collect();
    let Some(i) = args.iter().position(|a| a == SERVE_ARG) else { return false };
    let port = |k: usize| -> u16 {
        args.get(i + k).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{SERVE_ARG} LISTEN_PORT UPSTREAM_PORT"))
    };
    let (listen, upstream) = (port(1), port(2));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build().expect("runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", listen)).await.expect("bind");
        loop {
            let Ok((mut client, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let _ = client.set_nodelay(true);
                let Ok(mut server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else { return };
                let _ = server.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    })
}

/// Starts the floor proxy in front of the leader, optionally under a wrapper such as valgrind.
pub fn start(env: &Env, tag: &str, wrapper: &[&str], ready: Duration) -> Service {
    let port = free_port();
    let exe = std::env::current_exe().expect("the bench binary's path");
    let mut cmd = crate::targets::wrapped(wrapper, &exe);
    cmd.args([SERVE_ARG, &port.to_string(), &env.leader_port().to_string()]);
    let mut svc =
        Service::spawn("tokio-floor", cmd, port, env.dir.join(format!("tokio-floor-{tag}.log")), libc::SIGTERM);
    env.wait_ready(&mut svc, ready);
    svc
}

pub fn target(env: &Env) -> Target {
    let svc = start(env, "load", &[], Duration::from_secs(30));
    Target { name: "tokio-floor", port: svc.port, service: Some(svc), metrics_port: None, tls: false }
}
