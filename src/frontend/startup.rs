//! Connection start: encryption requests, the startup packet, protocol negotiation, authentication.

use super::auth::{self as client_auth, ScramExchange};
use super::client_stream::ClientStream;
use crate::backend::ServerSecret;
use crate::config::{AuthMethod, ClientTlsMode};
use crate::error::ProxyError;
use crate::frontend::shared::Shared;
use crate::protocol::messages::{self, auth};
use crate::protocol::startup::{self, StartupPacket};
use crate::protocol::{fe, framing};
use crate::secret::{md5_salted, ScramVerifier};
use bytes::BytesMut;
use rand::RngCore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Authentication messages are small; PostgreSQL uses the same cap.
const MAX_AUTH_MESSAGE: usize = 10_000;

/// Who logged in and what they asked for.
#[derive(Debug, Clone)]
pub struct ClientLogin {
    pub user: String,
    pub database: String,
    /// Startup parameters other than user and database (application_name, options, ...).
    pub params: Vec<(String, String)>,
    /// What the servers are logged in to with as this user (with SCRAM passthrough, the
    /// ClientKey this login proved).
    pub server_secret: ServerSecret,
}

/// What a client's login proved, beyond that it may log in.
enum Proof {
    /// trust, md5: nothing reusable.
    Nothing,
    /// SCRAM: the ClientKey behind its proof.
    ScramClientKey([u8; 32]),
}

/// Runs the handshake; Ok(None) means the connection was a cancel request and is done.
pub async fn handshake(stream: &mut ClientStream, shared: &Shared) -> Result<Option<ClientLogin>, ProxyError> {
    let tls = shared.tls.current();
    if let Some(acceptor) = &tls {
        // PostgreSQL 17's direct TLS: a TLS hello where the first length would be.
        if stream.peek_first_byte().await? == Some(super::tls::TLS_HANDSHAKE_RECORD) {
            // Boxed: the TLS handshake's state is large, and every client task is sized for
            // its largest state for its whole life.
            Box::pin(stream.start_tls(acceptor, true)).await?;
        }
    }
    loop {
        let mut head = [0u8; 4];
        stream.read_exact(&mut head).await?;
        let len = startup::packet_len(head, shared.config().proxy.max_startup_packet_size)?;
        let mut body = vec![0u8; len - 4];
        stream.read_exact(&mut body).await?;
        match startup::parse(&body)? {
            StartupPacket::SslRequest if stream.encrypted() => {
                return Err(ProxyError::Protocol("SSLRequest inside TLS".into()));
            }
            StartupPacket::SslRequest if tls.is_some() => {
                stream.write_all(messages::ENCRYPTION_ACCEPTED).await?;
                Box::pin(stream.start_tls(tls.as_ref().expect("checked"), false)).await?;
            }
            // No GSS encryption, nor TLS unless [tls] is configured: plain text goes on.
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
                stream.write_all(messages::ENCRYPTION_REFUSED).await?
            }
            StartupPacket::Cancel { pid, secret } => {
                forward_cancel(shared, pid, secret).await;
                return Ok(None);
            }
            StartupPacket::Startup { .. }
                if !stream.encrypted() && tls.as_ref().is_some_and(|t| t.mode == ClientTlsMode::Require) =>
            {
                metrics::counter!(crate::metrics::CLIENT_LOGINS, "result" => "tls_required").increment(1);
                return Err(ProxyError::TlsRequired);
            }
            StartupPacket::Startup { minor, params } => {
                // Over TLS, SCRAM-SHA-256-PLUS binds the login to this connection's certificate.
                let channel = tls.as_ref().filter(|_| stream.encrypted()).map(|t| t.server_end_point.as_slice());
                return login(stream, shared, minor, params, channel).await.map(Some);
            }
        }
    }
}

async fn forward_cancel(shared: &Shared, pid: u32, secret: u32) {
    let result = match shared.cancels.lookup(pid, secret) {
        Some((node, spid, ssecret)) => {
            let n = &shared.pools.nodes[node];
            let config = shared.config();
            let synchronous = config.replication.synchronous != crate::config::SyncMode::Off;
            if synchronous && super::cancel::commit_waits_for_standbys(config.clone(), node, spid).await {
                tracing::warn!(node = %n.name, "cancel not forwarded: the client's commit waits for the synchronous standbys (cancelling the wait would acknowledge a commit no follower holds)");
                metrics::counter!(crate::metrics::CANCEL_REQUESTS, "result" => "synchronous_commit").increment(1);
                return;
            }
            match super::cancel::send_cancel(&n.host, n.port, spid, ssecret).await {
                Ok(()) => "forwarded",
                Err(e) => {
                    tracing::warn!(node = %n.name, error = %e, "could not forward cancel");
                    "failed"
                }
            }
        }
        None => "ignored",
    };
    metrics::counter!(crate::metrics::CANCEL_REQUESTS, "result" => result).increment(1);
}

async fn login(
    stream: &mut ClientStream,
    shared: &Shared,
    minor: i32,
    mut params: Vec<(String, String)>,
    channel: Option<&[u8]>,
) -> Result<ClientLogin, ProxyError> {
    let unrecognized: Vec<String> =
        params.iter().filter(|(k, _)| k.starts_with("_pq_.")).map(|(k, _)| k.clone()).collect();
    if minor > 0 || !unrecognized.is_empty() {
        let mut out = BytesMut::new();
        messages::put_negotiate_protocol_version(&mut out, 0, &unrecognized);
        stream.write_all(&out).await?;
        params.retain(|(k, _)| !k.starts_with("_pq_."));
    }
    let take = |params: &mut Vec<(String, String)>, key: &str| {
        params.iter().position(|(k, _)| k == key).map(|i| params.remove(i).1)
    };
    let user = take(&mut params, "user")
        .filter(|u| !u.is_empty())
        .ok_or_else(|| ProxyError::Protocol("no PostgreSQL user name specified in startup packet".into()))?;
    let database = take(&mut params, "database").filter(|d| !d.is_empty()).unwrap_or_else(|| user.clone());
    if take(&mut params, "replication").is_some_and(|r| r != "false" && r != "0" && r != "off") {
        return Err(ProxyError::Protocol("replication connections are not supported by pgcausal".into()));
    }
    let running = shared.config();
    let looked_up = match running.user(&user) {
        None if running.auth.query.is_some() => {
            shared.auth_cache.lookup(&running, shared.topology.snapshot().leader, &user).await?
        }
        _ => None,
    };
    let Some(config) = running.user(&user).or(looked_up.as_deref()) else {
        // The same exchange and message as a wrong password, so user names cannot be probed.
        scram(stream, &client_auth::mock_verifier(&user), channel).await?;
        metrics::counter!(crate::metrics::CLIENT_LOGINS, "result" => "auth_failed").increment(1);
        return Err(ProxyError::AuthFailed(user));
    };
    let proof = match config.auth {
        AuthMethod::Trust => Some(Proof::Nothing),
        AuthMethod::Md5 => {
            // `validate` refuses an md5 user with a SCRAM verifier: an md5 form is always there.
            let inner = config.secret().md5_inner(&user).unwrap_or_default();
            md5(stream, &inner).await?.then_some(Proof::Nothing)
        }
        AuthMethod::ScramSha256 => match shared.scram_verifier(&user).or_else(|| stored_verifier(config)) {
            Some(verifier) => scram(stream, &verifier, channel).await?.map(Proof::ScramClientKey),
            None => scram(stream, &client_auth::mock_verifier(&user), channel).await?.map(Proof::ScramClientKey),
        },
    };
    let Some(proof) = proof else {
        metrics::counter!(crate::metrics::CLIENT_LOGINS, "result" => "auth_failed").increment(1);
        return Err(ProxyError::AuthFailed(user));
    };
    metrics::counter!(crate::metrics::CLIENT_LOGINS, "result" => "ok").increment(1);
    let server_secret = match proof {
        Proof::ScramClientKey(key) => ServerSecret::configured(config).with_client_key(key),
        Proof::Nothing => ServerSecret::configured(config),
    };
    Ok(ClientLogin { user, database, params, server_secret })
}

/// The SCRAM verifier of a user found by `[auth] query` (configured users' are kept in `Shared`).
fn stored_verifier(user: &crate::config::UserConfig) -> Option<std::sync::Arc<ScramVerifier>> {
    match user.secret() {
        crate::secret::Secret::Scram(verifier) => Some(std::sync::Arc::new(verifier)),
        _ => None,
    }
}

/// Reads one password-family message ('p') during authentication.
async fn read_password_message(stream: &mut ClientStream) -> Result<Vec<u8>, ProxyError> {
    let mut head = [0u8; framing::HEADER_LEN];
    stream.read_exact(&mut head).await?;
    let (tag, total) = framing::peek_header(&head, MAX_AUTH_MESSAGE)?.expect("header is complete");
    if tag != fe::PASSWORD {
        return Err(ProxyError::Protocol(format!("expected password response, got message type '{}'", tag as char)));
    }
    let mut body = vec![0u8; total - framing::HEADER_LEN];
    stream.read_exact(&mut body).await?;
    Ok(body)
}

async fn md5(stream: &mut ClientStream, md5_inner: &str) -> Result<bool, ProxyError> {
    let mut salt = [0u8; 4];
    rand::thread_rng().fill_bytes(&mut salt);
    let mut out = BytesMut::new();
    messages::put_auth(&mut out, auth::MD5_PASSWORD, &salt);
    stream.write_all(&out).await?;
    let body = read_password_message(stream).await?;
    let answer = body.strip_suffix(b"\0").unwrap_or(&body);
    Ok(answer == md5_salted(md5_inner, salt).as_bytes())
}

/// Runs SCRAM-SHA-256 against `verifier`, offering SCRAM-SHA-256-PLUS too over TLS (`channel`:
/// the certificate's `tls-server-end-point`); Ok(Some(ClientKey)) when the client's proof verifies.
async fn scram(
    stream: &mut ClientStream,
    verifier: &ScramVerifier,
    channel: Option<&[u8]>,
) -> Result<Option<[u8; 32]>, ProxyError> {
    let mut out = BytesMut::new();
    let mechanisms: &[u8] = match channel {
        Some(_) => b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0",
        None => b"SCRAM-SHA-256\0\0",
    };
    messages::put_auth(&mut out, auth::SASL, mechanisms);
    stream.write_all(&out).await?;
    // SASLInitialResponse: mechanism\0, int32 length, client-first.
    let body = read_password_message(stream).await?;
    let (mechanism, rest) =
        messages::read_cstr(&body).ok_or_else(|| ProxyError::Protocol("malformed SASL response".into()))?;
    let plus = match mechanism {
        b"SCRAM-SHA-256" => false,
        b"SCRAM-SHA-256-PLUS" if channel.is_some() => true,
        _ => return Err(ProxyError::Protocol("client selected an invalid SASL authentication mechanism".into())),
    };
    if rest.len() < 4 {
        return Err(ProxyError::Protocol("malformed SASL response".into()));
    }
    let client_first = &rest[4..];
    let (exchange, server_first) = match ScramExchange::start(verifier, client_first, channel, plus) {
        Ok(x) => x,
        Err(e) => return Err(ProxyError::Protocol(e.to_string())),
    };
    out.clear();
    messages::put_auth(&mut out, auth::SASL_CONTINUE, server_first.as_bytes());
    stream.write_all(&out).await?;
    let client_final = read_password_message(stream).await?;
    match exchange.finish(verifier, &client_final) {
        Ok(success) => {
            out.clear();
            messages::put_auth(&mut out, auth::SASL_FINAL, success.server_final.as_bytes());
            stream.write_all(&out).await?;
            Ok(Some(success.client_key))
        }
        Err(client_auth::ScramError::WrongProof) => Ok(None),
        Err(e) => Err(ProxyError::Protocol(e.to_string())),
    }
}
