//! The proxy's error type, and the one place that spells SQLSTATEs: those it sends clients and
//! those it reads from servers.

use crate::backend::BackendError;
use crate::protocol::framing::FrameError;
use crate::protocol::messages::{self, field, Severity};
use crate::protocol::startup::StartupError;
use bytes::BytesMut;
use std::time::Duration;

/// SQLSTATEs by their PostgreSQL names (errcodes.txt).
pub mod sqlstate {
    pub const CONNECTION_FAILURE: &str = "08006";
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const INVALID_PARAMETER_VALUE: &str = "22023";
    pub const INVALID_SQL_STATEMENT_NAME: &str = "26000";
    pub const INVALID_AUTHORIZATION_SPECIFICATION: &str = "28000";
    pub const SYNTAX_ERROR: &str = "42601";
    pub const CONFIG_FILE_ERROR: &str = "F0000";
    pub const INVALID_PASSWORD: &str = "28P01";
    pub const UNDEFINED_OBJECT: &str = "42704";
    pub const DUPLICATE_PREPARED_STATEMENT: &str = "42P05";
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    pub const CANNOT_CONNECT_NOW: &str = "57P03";
    pub const OBJECT_NOT_IN_PREREQUISITE_STATE: &str = "55000";
    pub const INTERNAL_ERROR: &str = "XX000";

    /// Sent to clients closed by KILL or a shutdown, and read from servers that close.
    pub const ADMIN_SHUTDOWN: &str = "57P01";

    // Read from servers only: the errors after which a read may run again elsewhere.
    pub const READ_ONLY_SQL_TRANSACTION: &str = "25006";
    pub const SERIALIZATION_FAILURE: &str = "40001";
    pub const CRASH_SHUTDOWN: &str = "57P02";
    /// The class of connection exceptions (08xxx).
    pub const CONNECTION_EXCEPTION_CLASS: &str = "08";

    /// A code as the five bytes a server's ErrorResponse carries.
    pub const fn bytes(code: &str) -> [u8; 5] {
        match code.as_bytes() {
            [a, b, c, d, e] => [*a, *b, *c, *d, *e],
            _ => panic!("a SQLSTATE has five characters"),
        }
    }
}

/// The SQLSTATE of an ErrorResponse body, or XX000 if it has none.
pub fn sqlstate_of(body: &[u8]) -> [u8; 5] {
    messages::code_field(body).unwrap_or(sqlstate::bytes(sqlstate::INTERNAL_ERROR))
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("{0}")]
    Startup(#[from] StartupError),
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// A message tag PostgreSQL does not take after login: answered as PostgreSQL does, before
    /// it reaches (and closes) a shared server connection.
    #[error("invalid frontend message type {0}")]
    UnknownMessageType(u8),
    #[error("password authentication failed for user \"{0}\"")]
    AuthFailed(String),
    #[error("canceling authentication due to timeout")]
    LoginTimeout,
    /// `[auth] query` could not be run on the leader (the user may or may not exist).
    #[error("could not look up the user with [auth] query: {0}")]
    AuthQuery(String),
    #[error("sorry, too many clients already")]
    TooManyClients,
    /// The client sent nothing between transactions for `proxy.client_idle_timeout`.
    #[error("terminating connection due to idle-session timeout")]
    IdleSessionTimeout,
    /// The client sent nothing inside a transaction for `proxy.idle_in_transaction_timeout`.
    #[error("terminating connection due to idle-in-transaction timeout")]
    IdleInTransactionTimeout,
    /// A per-user or per-database client limit: what ("role \"app\"", "database \"db\"").
    #[error("too many connections for {0}")]
    TooManyClientsFor(String),
    /// A plaintext startup while `tls.client_mode = require`.
    #[error("TLS is required (tls.client_mode = \"require\"): connect with sslmode=require or stronger")]
    TlsRequired,
    #[error("no server connection to node {node} became free within {waited:?}")]
    PoolTimeout { node: String, waited: Duration },
    #[error("no leader is known: {0}")]
    NoLeader(String),
    /// The leader refused connections for all of `failover.hold_timeout`.
    #[error("the leader {node} accepted no connection within {waited:?} (failover.hold_timeout): {error}")]
    LeaderUnreachable { node: String, waited: Duration, error: String },
    /// The server connection of the client's unit failed (its node died, froze or was cut off).
    /// `mid_message`: part of a message already reached the client, which could not parse
    /// anything written after it: the connection is closed without an error message.
    #[error("lost the server connection to node {node}: {reason}")]
    ServerLost { node: String, reason: String, mid_message: bool },
    #[error("{0}")]
    FloorTimeout(String),
    #[error("no follower is eligible for reads and routing.leader_reads = \"never\"")]
    NoFollower,
    #[error("{0}")]
    Backend(#[from] BackendError),
    #[error(
        "a pgcausal.* command must be sent alone, not with other statements in one query string \
         (or as a startup option: -c pgcausal.name=value)"
    )]
    ProxyCommandNotAlone,
    #[error("could not restore this session's settings on a server connection: {0}")]
    StateReplay(BackendError),
    #[error("client connection: {0}")]
    ClientIo(#[from] std::io::Error),
    /// `SET pgcausal.<name>` to a value it does not take; `expected` lists what it does.
    #[error("invalid value for parameter \"{name}\": \"{value}\" ({expected})")]
    InvalidParameterValue { name: String, value: String, expected: &'static str },
    #[error("unrecognized configuration parameter \"{0}\"")]
    UnknownParameter(String),
    /// A Parse or PREPARE that reuses a statement name.
    #[error("prepared statement \"{0}\" already exists")]
    DuplicateStatement(String),
    /// An EXECUTE or DEALLOCATE of a name the client has not prepared.
    #[error("prepared statement \"{0}\" does not exist")]
    UnknownStatement(String),
    /// A statement whose relations DDL changed since it was prepared (PostgreSQL's plan cache error).
    #[error("cached plan must not change result type")]
    CachedPlanChanged,
    /// A login to the admin console database by a user not in `[admin] users`.
    #[error("user \"{0}\" may not use the admin console (database \"pgcausal\"): it is not in [admin] users")]
    NotAdmin(String),
    /// A query the admin console does not take.
    #[error("{0}")]
    AdminCommand(#[from] crate::frontend::admin::command::CommandError),
    /// RELOAD found the config file unusable; the running config stays.
    #[error("reload failed, the running configuration is kept: {0}")]
    Reload(String),
    /// KILL of a client id that is not connected.
    #[error("no client with id {0} is connected (see SHOW CLIENTS)")]
    UnknownClient(u64),
    /// PROMOTE refused or failed (the leader is up, no such node, the node is behind...).
    #[error("PROMOTE: {0}")]
    Promote(String),
    /// SWITCHOVER refused or called off (no healthy leader, no such follower, catch-up too slow...).
    #[error("SWITCHOVER: {0}")]
    Switchover(String),
    /// A panic in pgcausal while serving this client (logged with its message): only this
    /// connection ends.
    #[error(
        "internal error in pgcausal: this connection was closed, other clients are unaffected (see the proxy's log)"
    )]
    Internal,
    /// The session was closed from the admin console (KILL) or by a shutdown.
    #[error("terminating connection due to administrator command")]
    AdminShutdown,
}

impl ProxyError {
    /// The SQLSTATE the client sees for this error: a server's own for the errors it reported.
    pub fn sqlstate(&self) -> &str {
        match self {
            ProxyError::Backend(b) | ProxyError::StateReplay(b) => b.sqlstate(),
            own => own.own_sqlstate().unwrap_or(sqlstate::INTERNAL_ERROR),
        }
    }

    /// The SQLSTATE of an error the proxy raises itself (a constant); None for a backend error,
    /// whose code may be the server's.
    pub fn own_sqlstate(&self) -> Option<&'static str> {
        use sqlstate::*;
        Some(match self {
            ProxyError::Frame(_) | ProxyError::Protocol(_) | ProxyError::UnknownMessageType(_) => PROTOCOL_VIOLATION,
            ProxyError::Startup(StartupError::UnsupportedVersion(..)) => FEATURE_NOT_SUPPORTED,
            ProxyError::Startup(_) => PROTOCOL_VIOLATION,
            ProxyError::AuthFailed(_) => INVALID_PASSWORD,
            ProxyError::TlsRequired => INVALID_AUTHORIZATION_SPECIFICATION,
            ProxyError::IdleSessionTimeout => "57P05",
            ProxyError::IdleInTransactionTimeout => "25P03",
            ProxyError::LoginTimeout | ProxyError::AuthQuery(_) => CONNECTION_FAILURE,
            ProxyError::TooManyClients | ProxyError::TooManyClientsFor(_) | ProxyError::PoolTimeout { .. } => {
                TOO_MANY_CONNECTIONS
            }
            ProxyError::NoLeader(_)
            | ProxyError::LeaderUnreachable { .. }
            | ProxyError::NoFollower
            | ProxyError::FloorTimeout(_) => CANNOT_CONNECT_NOW,
            ProxyError::ServerLost { .. } => CONNECTION_FAILURE,
            ProxyError::Backend(_) | ProxyError::StateReplay(_) => return None,
            ProxyError::ProxyCommandNotAlone | ProxyError::CachedPlanChanged => FEATURE_NOT_SUPPORTED,
            ProxyError::ClientIo(_) => CONNECTION_FAILURE,
            ProxyError::InvalidParameterValue { .. } => INVALID_PARAMETER_VALUE,
            ProxyError::UnknownParameter(_) => UNDEFINED_OBJECT,
            ProxyError::DuplicateStatement(_) => DUPLICATE_PREPARED_STATEMENT,
            ProxyError::UnknownStatement(_) => INVALID_SQL_STATEMENT_NAME,
            ProxyError::NotAdmin(_) => INVALID_AUTHORIZATION_SPECIFICATION,
            ProxyError::AdminCommand(_) => SYNTAX_ERROR,
            ProxyError::Reload(_) => CONFIG_FILE_ERROR,
            ProxyError::UnknownClient(_) => UNDEFINED_OBJECT,
            ProxyError::AdminShutdown => ADMIN_SHUTDOWN,
            ProxyError::Internal => INTERNAL_ERROR,
            ProxyError::Promote(_) | ProxyError::Switchover(_) => OBJECT_NOT_IN_PREREQUISITE_STATE,
        })
    }

    /// The ErrorResponse that tells the client.
    pub fn error_response(&self, severity: Severity) -> BytesMut {
        let extra: &[(u8, &str)] = match self {
            // Exactly PostgreSQL's error, routine included: drivers recognise it by that and re-prepare.
            ProxyError::CachedPlanChanged => &[(field::FILE, "plancache.c"), (field::ROUTINE, "RevalidateCachedQuery")],
            _ => &[],
        };
        messages::error_response_with(severity.as_str(), self.sqlstate(), &self.to_string(), extra)
    }

    /// Counts the error in the errors metric, under the class of the SQLSTATE the client sees.
    pub fn count(&self) {
        crate::metrics::error(self.sqlstate().as_bytes(), "proxy");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_a_five_character_sqlstate() {
        let errors = [
            ProxyError::Protocol("x".into()),
            ProxyError::AuthFailed("u".into()),
            ProxyError::TooManyClients,
            ProxyError::Startup(StartupError::UnsupportedVersion(4, 0)),
            ProxyError::Frame(FrameError::BadLength(1)),
            ProxyError::Backend(BackendError::Timeout("connect".into())),
            ProxyError::ServerLost { node: "node1".into(), reason: "it went down".into(), mid_message: false },
            ProxyError::LeaderUnreachable {
                node: "node0".into(),
                waited: Duration::from_secs(15),
                error: "refused".into(),
            },
        ];
        let codes: Vec<&str> = errors.iter().map(|e| e.sqlstate()).collect();
        assert_eq!(codes, ["08P01", "28P01", "53300", "0A000", "08P01", "08006", "08006", "57P03"]);
    }

    #[test]
    fn the_error_response_carries_the_code_and_text() {
        let e = ProxyError::UnknownStatement("p".into());
        let m = e.error_response(Severity::Error);
        assert_eq!(&crate::error::sqlstate_of(&m[5..]), b"26000");
        assert_eq!(messages::message_of(&m[5..]), "prepared statement \"p\" does not exist");
        let plan = ProxyError::CachedPlanChanged.error_response(Severity::Error);
        assert!(messages::fields(&plan[5..]).any(|f| f == (field::ROUTINE, b"RevalidateCachedQuery".as_slice())));
    }
}
