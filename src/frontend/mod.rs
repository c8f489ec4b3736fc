//! The client side: startup and authentication, then one session task per client.

pub mod admin;
pub mod auth;
pub mod auth_query;
pub mod cancel;
pub mod client_state;
pub mod client_stream;
pub mod clients;
pub mod containment;
pub mod ddl;
pub mod inflight;
pub mod lifecycle;
pub mod prepared;
pub mod proxy_settings;
pub mod proxy_statements;
pub mod requests;
pub mod session;
pub mod shared;
pub mod sql_prepared;
pub mod startup;
pub mod tls;

use crate::error::ProxyError;
use crate::protocol::messages::Severity;
use client_stream::ClientStream;
use containment::contained;
use shared::Shared;
use startup::ClientLogin;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Runs one client connection from its first byte to its close.
pub async fn serve_client(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>, count: usize) {
    let shared = &*shared;
    let mut stream = ClientStream::plain(stream);
    // The login's state and its outcome live in `log_in`'s future, gone once the session runs:
    // this task holds for its whole life only what the session borrows.
    let Some(login) = log_in(&mut stream, peer, shared, count).await else { return };
    let config = shared.config();
    let admin = login.database == crate::config::ADMIN_DATABASE;
    if admin && !config.admin.users.contains(&login.user) {
        fail(&mut stream, &ProxyError::NotAdmin(login.user.clone())).await;
        return;
    }
    let registered = if admin {
        shared.clients.register(peer, &login.user, &login.database) // operators always get in
    } else {
        let per_user = config.user(&login.user).and_then(|u| u.max_client_connections);
        let limits = clients::Limits {
            per_user: per_user.unwrap_or(config.proxy.max_client_connections_per_user),
            per_database: config.proxy.max_client_connections_per_database,
        };
        match shared.clients.register_within(peer, &login.user, &login.database, limits) {
            Ok(registered) => registered,
            Err(e) => {
                tracing::info!(%peer, user = %login.user, database = %login.database, error = %e, "client refused");
                fail(&mut stream, &e).await;
                return;
            }
        }
    };
    drop(config); // the session takes its own (a RELOAD applies to sessions that start after it)
    if shared.lifecycle.is_stopping() {
        registered.entry.signal(clients::signal::SHUTDOWN); // logged in while the proxy drains
    }
    let result = if admin {
        let console = contained("admin console", Box::pin(admin::run(&mut stream, &login, shared, &registered.entry)));
        let result = console.await.unwrap_or(Err(ProxyError::Internal));
        if let Err(e) = &result {
            fail(&mut stream, e).await;
        }
        result
    } else {
        session::run(&mut stream, &login, shared, registered.entry.clone()).await
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "session ended with error");
    }
}

/// The connection's handshake: its login, or None once it is fully handled (a cancel request,
/// a refusal or failure already told the client).
async fn log_in(stream: &mut ClientStream, peer: SocketAddr, shared: &Shared, count: usize) -> Option<ClientLogin> {
    let config = shared.config();
    if count > config.proxy.max_client_connections {
        fail(stream, &ProxyError::TooManyClients).await;
        return None;
    }
    let login = contained(
        "login",
        crate::control::timeout(config.proxy.client_login_timeout, startup::handshake(stream, shared)),
    )
    .await
    .unwrap_or(Ok(Err(ProxyError::Internal)));
    let error = match login {
        Ok(Ok(Some(login))) => {
            tracing::debug!(%peer, user = %login.user, database = %login.database, "client logged in");
            return Some(login);
        }
        Ok(Ok(None)) => return None, // a cancel request, fully handled
        Ok(Err(e)) => {
            // A close before logging in (a load balancer's check, psql asking for a password) is routine.
            match &e {
                ProxyError::ClientIo(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
                    tracing::debug!(%peer, "client closed the connection before logging in")
                }
                _ => tracing::info!(%peer, error = %e, "client startup failed"),
            }
            e
        }
        Err(_) => ProxyError::LoginTimeout,
    };
    fail(stream, &error).await;
    None
}

/// Sends a FATAL ErrorResponse (best effort) and counts it; the caller closes the connection.
pub async fn fail(stream: &mut (impl AsyncWrite + Unpin), e: &ProxyError) {
    e.count();
    if matches!(e, ProxyError::ClientIo(_)) {
        return;
    }
    if matches!(e, ProxyError::ServerLost { mid_message: true, .. }) {
        // The client holds part of a message: an ErrorResponse now would read as its rest.
        let _ = stream.shutdown().await;
        return;
    }
    let msg = e.error_response(Severity::Fatal);
    let _ = crate::control::timeout(std::time::Duration::from_secs(1), stream.write_all(&msg)).await;
    let _ = stream.shutdown().await;
}
