//! The cluster manager's error type, and the `Result` and io-context helpers the module uses.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("PostgreSQL binaries not found: {0}")]
    NoBinaries(String),
    #[error("cluster setup failed: {0}")]
    Setup(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("command `{command}` failed ({status}): {detail}")]
    Command { command: String, status: String, detail: String },
    #[error("{node} {what} (log {log})\n--- log tail ---\n{tail}")]
    Node { node: String, what: String, log: PathBuf, tail: String },
    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout { what: String, waited: Duration },
    #[error("no node {0} in this cluster")]
    NoSuchNode(usize),
}

pub(super) type Result<T, E = ClusterError> = std::result::Result<T, E>;

pub(super) fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> ClusterError {
    let context = context.into();
    move |source| ClusterError::Io { context, source }
}
