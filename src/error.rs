//! The proxy's error type and the one place that maps errors to SQLSTATEs for clients.

use crate::backend::BackendError;
use crate::protocol::framing::FrameError;
use crate::protocol::startup::StartupError;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("{0}")]
    Startup(#[from] StartupError),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("password authentication failed for user \"{0}\"")]
    AuthFailed(String),
    #[error("canceling authentication due to timeout")]
    LoginTimeout,
    #[error("sorry, too many clients already")]
    TooManyClients,
    #[error("no server connection to node {node} became free within {waited:?}")]
    PoolTimeout { node: String, waited: Duration },
    #[error("no leader is known: {0}")]
    NoLeader(String),
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
    #[error("internal error: {0}")]
    Internal(String),
    #[error("client connection: {0}")]
    ClientIo(#[from] std::io::Error),
}

impl ProxyError {
    /// The SQLSTATE the client sees for this error.
    pub fn sqlstate(&self) -> &str {
        match self {
            ProxyError::Frame(_) | ProxyError::Protocol(_) => "08P01",
            ProxyError::Startup(StartupError::UnsupportedVersion(..)) => "0A000",
            ProxyError::Startup(_) => "08P01",
            ProxyError::AuthFailed(_) => "28P01",
            ProxyError::LoginTimeout => "08006",
            ProxyError::TooManyClients | ProxyError::PoolTimeout { .. } => "53300",
            ProxyError::NoLeader(_) | ProxyError::NoFollower | ProxyError::FloorTimeout(_) => "57P03",
            ProxyError::Backend(b) | ProxyError::StateReplay(b) => b.sqlstate(),
            ProxyError::ProxyCommandNotAlone => "0A000",
            ProxyError::Internal(_) => "XX000",
            ProxyError::ClientIo(_) => "08006",
        }
    }

    /// The SQLSTATE class (first two characters), the label of the errors metric.
    pub fn class(&self) -> String {
        self.sqlstate()[..2].to_string()
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
        ];
        let codes: Vec<&str> = errors.iter().map(|e| e.sqlstate()).collect();
        assert_eq!(codes, ["08P01", "28P01", "53300", "0A000", "08P01", "08006"]);
    }
}
