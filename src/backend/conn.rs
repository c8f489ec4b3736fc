//! One server connection: TCP connect, startup, authentication (SCRAM-SHA-256, md5, password, trust).

use super::abort::{NodeSockets, Registration};
use super::scram_passthrough::ScramPassthrough;
use super::server_secret::ServerSecret;
use crate::error::sqlstate;
use crate::protocol::{be, framing, messages};
use crate::socket::{SocketReader, SocketWriter};
use bytes::{Buf, Bytes, BytesMut};
use postgres_protocol::authentication::{self, sasl};
use postgres_protocol::message::frontend;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("server connection: {0}")]
    Io(#[from] std::io::Error),
    /// The server answered with an ErrorResponse: its message and SQLSTATE.
    #[error("{message} (SQLSTATE {code})")]
    Server { code: String, message: String },
    #[error("server authentication: {0}")]
    Auth(String),
    #[error("server {0} timed out")]
    Timeout(String),
    #[error("server protocol violation: {0}")]
    Protocol(String),
    /// TLS to the server could not start (refused, handshake, certificate, CA file).
    #[error("server TLS: {0}")]
    Tls(String),
}

impl BackendError {
    pub fn sqlstate(&self) -> &str {
        match self {
            BackendError::Server { code, .. } => code,
            BackendError::Auth(_) => sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
            BackendError::Protocol(_) => sqlstate::PROTOCOL_VIOLATION,
            BackendError::Io(_) | BackendError::Timeout(_) | BackendError::Tls(_) => sqlstate::CONNECTION_FAILURE,
        }
    }
}

/// Where and as whom to log in.
#[derive(Clone, Debug)]
pub struct Login {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub secret: ServerSecret,
    pub database: String,
    pub tls: super::tls::ServerTls,
}

/// The SCRAM client of one login: from a plaintext password, or passing a client's key through.
enum ScramClient<'a> {
    Password(sasl::ScramSha256),
    Passthrough(ScramPassthrough<'a>),
}

pub struct ServerConn {
    /// Its socket in its node's registry, for `Pools::abort_node`. Declared first, so it is
    /// dropped (deregistered) before the socket closes.
    registration: Option<Registration>,
    pub reader: SocketReader,
    pub writer: SocketWriter,
    /// Bytes read from the server and not yet passed on.
    pub rbuf: BytesMut,
    /// ParameterStatus values the server reported at startup.
    pub params: Vec<(String, String)>,
    /// The server's BackendKeyData, used to forward cancel requests.
    pub pid: u32,
    pub secret: u32,
    pub created: Instant,
    /// When it was opened, in milliseconds since the Unix epoch (for the admin console).
    pub created_unix_ms: u64,
    /// Set when a client may have left session state; the pool resets it before reuse.
    pub needs_reset: bool,
    /// Settings a client left on this connection (the next client's are synced over them).
    pub settings: super::settings::Settings,
    /// SQL-level (PREPARE name AS ...) statements this connection holds, by name.
    pub sql_statements: super::sql_statements::ServerSqlStatements,
    /// Proxy-named prepared statements this connection holds.
    pub statements: super::statements::ServerStatements,
    /// Which client sessions ran units here since it opened or last ran DISCARD SEQUENCES
    /// (`currval`/`lastval` state): see `SequenceUse`.
    pub sequences: SequenceUse,
    /// Counts this connection in the server-connections gauge while it lives.
    pub gauge: Option<crate::metrics::GaugeGuard>,
}

/// Whose `nextval` state a backend may hold: `currval`/`lastval` must never show one client
/// another's value.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum SequenceUse {
    #[default]
    Nobody,
    Only(u64),
    Several,
}

impl SequenceUse {
    /// Session `client` leased the connection.
    pub fn leased_by(&mut self, client: u64) {
        *self = match *self {
            SequenceUse::Nobody => SequenceUse::Only(client),
            SequenceUse::Only(c) if c == client => SequenceUse::Only(client),
            _ => SequenceUse::Several,
        };
    }

    /// True when state of a client other than `client` may be here.
    pub fn foreign_to(self, client: u64) -> bool {
        !matches!(self, SequenceUse::Nobody) && self != SequenceUse::Only(client)
    }
}

impl ServerConn {
    /// Opens and logs in a connection; with `sockets`, its socket is registered there from the
    /// TCP connect on (a cut ends a login stuck on a frozen server too).
    pub async fn connect(
        login: &Login,
        timeout: Duration,
        sockets: Option<&Arc<NodeSockets>>,
    ) -> Result<ServerConn, BackendError> {
        crate::control::timeout(timeout, Self::connect_inner(login, sockets))
            .await
            .map_err(|_| BackendError::Timeout(format!("{}:{} connect", login.host, login.port)))?
    }

    async fn connect_inner(login: &Login, sockets: Option<&Arc<NodeSockets>>) -> Result<ServerConn, BackendError> {
        let stream = TcpStream::connect((login.host.as_str(), login.port)).await?;
        let registration = sockets.map(|s| s.register(stream.as_raw_fd()));
        stream.set_nodelay(true)?;
        let (reader, writer) = match login.tls.start(stream, &login.host).await.map_err(BackendError::Tls)? {
            super::tls::Started::Plain(tcp) => {
                let (reader, writer) = tcp.into_split();
                (SocketReader::Plain(reader), SocketWriter::Plain(writer))
            }
            super::tls::Started::Tls(reader, writer) => (reader, writer),
        };
        let mut conn = ServerConn {
            registration,
            reader,
            writer,
            rbuf: BytesMut::with_capacity(16 * 1024),
            params: Vec::new(),
            pid: 0,
            secret: 0,
            created: Instant::now(),
            created_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            needs_reset: false,
            sequences: SequenceUse::default(),
            gauge: None,
            statements: Default::default(),
            sql_statements: Default::default(),
            settings: Default::default(),
        };
        let mut out = BytesMut::new();
        let params =
            [("user", login.user.as_str()), ("database", login.database.as_str()), ("application_name", "pgcausal")];
        frontend::startup_message(params, &mut out)?;
        conn.writer.write_all(&out).await?;
        conn.authenticate(login).await?;
        // After AuthenticationOk: ParameterStatus*, BackendKeyData, then ReadyForQuery.
        loop {
            let (tag, body) = conn.read_message().await?;
            match tag {
                be::PARAMETER_STATUS => note_parameter(&mut conn.params, &body),
                be::BACKEND_KEY_DATA if body.len() >= 8 => {
                    conn.pid = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                    conn.secret = u32::from_be_bytes([body[4], body[5], body[6], body[7]]);
                }
                be::READY_FOR_QUERY => return Ok(conn),
                be::ERROR_RESPONSE => return Err(server_error(&body)),
                _ => {} // NoticeResponse and friends during startup are dropped.
            }
        }
    }

    async fn authenticate(&mut self, login: &Login) -> Result<(), BackendError> {
        let mut out = BytesMut::new();
        let mut scram: Option<ScramClient> = None;
        let cannot = |what: &str| {
            BackendError::Auth(format!(
                "the server asks for {what} and [[users]] password of \"{}\" is a hash that cannot answer it: set server_password",
                login.user
            ))
        };
        loop {
            let (tag, body) = self.read_message().await?;
            if tag == be::ERROR_RESPONSE {
                return Err(server_error(&body));
            }
            if tag != be::AUTHENTICATION || body.len() < 4 {
                return Err(BackendError::Protocol(format!(
                    "unexpected message '{}' during authentication",
                    tag as char
                )));
            }
            let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
            let data = &body[4..];
            out.clear();
            match code {
                0 => return Ok(()),
                3 => match &login.secret {
                    ServerSecret::Password(p) => frontend::password_message(p.as_bytes(), &mut out)?,
                    _ => return Err(cannot("a cleartext password")),
                },
                5 if data.len() >= 4 => {
                    let salt = [data[0], data[1], data[2], data[3]];
                    let hash = match &login.secret {
                        ServerSecret::Password(p) => {
                            authentication::md5_hash(login.user.as_bytes(), p.as_bytes(), salt)
                        }
                        ServerSecret::Md5Hash(hex) => crate::secret::md5_salted(hex, salt),
                        ServerSecret::ScramPassthrough { .. } => return Err(cannot("an md5 password")),
                    };
                    frontend::password_message(hash.as_bytes(), &mut out)?;
                }
                10 => {
                    let offers_scram = data.split(|&b| b == 0).any(|m| m == sasl::SCRAM_SHA_256.as_bytes());
                    if !offers_scram {
                        return Err(BackendError::Auth("server offers no supported SASL mechanism".into()));
                    }
                    let client = match &login.secret {
                        ServerSecret::Password(p) => {
                            ScramClient::Password(sasl::ScramSha256::new(p.as_bytes(), sasl::ChannelBinding::unsupported()))
                        }
                        ServerSecret::ScramPassthrough { verifier, client_key: Some(key) } => {
                            ScramClient::Passthrough(ScramPassthrough::new(verifier, *key))
                        }
                        ServerSecret::ScramPassthrough { client_key: None, .. } => {
                            return Err(BackendError::Auth(format!(
                                "SCRAM passthrough for \"{}\" has no client key yet (no client of it has logged in): set server_password",
                                login.user
                            )))
                        }
                        ServerSecret::Md5Hash(_) => return Err(cannot("SCRAM")),
                    };
                    let first = match &client {
                        ScramClient::Password(s) => s.message().to_vec(),
                        ScramClient::Passthrough(s) => s.client_first().into_bytes(),
                    };
                    frontend::sasl_initial_response(sasl::SCRAM_SHA_256, &first, &mut out)?;
                    scram = Some(client);
                }
                11 => {
                    let s = scram.as_mut().ok_or_else(|| BackendError::Auth("SASL continue without start".into()))?;
                    match s {
                        ScramClient::Password(s) => {
                            s.update(data).map_err(|e| BackendError::Auth(e.to_string()))?;
                            frontend::sasl_response(s.message(), &mut out)?;
                        }
                        ScramClient::Passthrough(s) => {
                            let client_final = s.client_final(data).map_err(|e| BackendError::Auth(e.to_string()))?;
                            frontend::sasl_response(client_final.as_bytes(), &mut out)?;
                        }
                    }
                }
                12 => {
                    let s = scram.take().ok_or_else(|| BackendError::Auth("SASL final without start".into()))?;
                    let checked = match s {
                        ScramClient::Password(mut s) => s.finish(data).map_err(|e| e.to_string()),
                        ScramClient::Passthrough(s) => s.finish(data).map_err(|e| e.to_string()),
                    };
                    checked.map_err(|e| BackendError::Auth(format!("server signature: {e}")))?;
                    continue;
                }
                other => return Err(BackendError::Auth(format!("unsupported authentication request {other}"))),
            }
            self.writer.write_all(&out).await?;
        }
    }

    /// Reads one whole message (startup and control use only; the data path streams).
    pub async fn read_message(&mut self) -> Result<(u8, Bytes), BackendError> {
        loop {
            let header =
                framing::peek_header(&self.rbuf, usize::MAX).map_err(|e| BackendError::Protocol(e.to_string()))?;
            if let Some((tag, total)) = header {
                if self.rbuf.len() >= total {
                    let mut msg = self.rbuf.split_to(total);
                    msg.advance(framing::HEADER_LEN);
                    return Ok((tag, msg.freeze()));
                }
            }
            if self.reader.read_buf(&mut self.rbuf).await? == 0 {
                return Err(BackendError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    /// Runs a simple query to completion, discarding its output; fails on ErrorResponse.
    pub async fn run(&mut self, sql: &str) -> Result<(), BackendError> {
        self.run_each(&[sql]).await?.pop().expect("one answer per query")
    }

    /// Sends simple queries in one write and reads each one's outcome (their output discarded):
    /// one round trip, and a failed query does not keep the next from running. The outer error
    /// is the connection's (it is then unusable); the inner ones are each query's ErrorResponse.
    pub async fn run_each(&mut self, queries: &[&str]) -> Result<Vec<Result<(), BackendError>>, BackendError> {
        let mut out = BytesMut::new();
        for sql in queries {
            frontend::query(sql, &mut out)?;
        }
        self.writer.write_all(&out).await?;
        let mut results = Vec::with_capacity(queries.len());
        let mut failure = None;
        while results.len() < queries.len() {
            let (tag, body) = self.read_message().await?;
            match tag {
                be::ERROR_RESPONSE => failure = Some(server_error(&body)),
                be::PARAMETER_STATUS => note_parameter(&mut self.params, &body),
                be::READY_FOR_QUERY => results.push(failure.take().map_or(Ok(()), Err)),
                _ => {}
            }
        }
        Ok(results)
    }

    /// Runs a simple query and returns the first column of its first row (None for NULL or no row).
    pub async fn query_value(&mut self, sql: &str) -> Result<Option<String>, BackendError> {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out)?;
        self.writer.write_all(&out).await?;
        let (mut value, mut failure) = (None, None);
        loop {
            let (tag, body) = self.read_message().await?;
            match tag {
                be::DATA_ROW if value.is_none() => value = first_column(&body),
                be::ERROR_RESPONSE => failure = Some(server_error(&body)),
                be::PARAMETER_STATUS => note_parameter(&mut self.params, &body),
                be::READY_FOR_QUERY => return failure.map_or(Ok(value), Err),
                _ => {}
            }
        }
    }

    /// Why `Pools::abort_node` cut this connection, if it did.
    pub fn cut_reason(&self) -> Option<&str> {
        self.registration.as_ref().and_then(Registration::cut_reason)
    }

    /// True if the server has sent something unsolicited (or closed) while idle in the pool.
    /// Asks the runtime's readiness flags first (no syscall, no waker registered): a read that
    /// drained the last answer cleared them, so only input that arrived since sets them again.
    pub fn has_pending_input(&mut self) -> bool {
        if !self.reader.seems_readable() {
            return false;
        }
        let mut probe = [0u8; 1];
        match self.reader.try_read(&mut probe) {
            Ok(0) => true,
            Ok(_) => {
                self.rbuf.extend_from_slice(&probe);
                true
            }
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        }
    }
}

/// The first column of a DataRow body as text (None for NULL).
fn first_column(body: &[u8]) -> Option<String> {
    let len = i32::from_be_bytes(body.get(2..6)?.try_into().ok()?);
    let bytes = body.get(6..6 + usize::try_from(len).ok()?)?;
    Some(String::from_utf8_lossy(bytes).into_owned())
}

fn server_error(body: &[u8]) -> BackendError {
    BackendError::Server {
        code: String::from_utf8_lossy(&crate::error::sqlstate_of(body)).into_owned(),
        message: messages::message_of(body),
    }
}

/// Records a ParameterStatus body (name\0value\0) in `params`, replacing an earlier value.
/// Also called for those that pass through to a client, so later logins see current values.
pub fn note_parameter(params: &mut Vec<(String, String)>, body: &[u8]) {
    let (name, rest) = messages::read_cstr(body).unwrap_or_default();
    let (value, _) = messages::read_cstr(rest).unwrap_or_default();
    let (name, value) = (String::from_utf8_lossy(name), String::from_utf8_lossy(value).into_owned());
    match params.iter_mut().find(|(n, _)| *n == name) {
        Some(p) => p.1 = value,
        None => params.push((name.into_owned(), value)),
    }
}
