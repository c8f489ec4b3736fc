//! Server connection failures, logged once per change rather than on every retry: the first
//! failure of a run (and any later, different one) is a warn line with PostgreSQL's own message
//! and SQLSTATE (or the I/O error) and the node; the first success after it is an info line.

use super::BackendError;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Why a connection to a server (or a probe over one) failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The SQLSTATE the server sent; None when it sent no ErrorResponse (refused, timed out, ...).
    pub sqlstate: Option<String>,
    /// The server's message, or the client-side error with its causes.
    pub message: String,
    /// No answer in time: says less than an error does (see `FailureLog::failed`).
    pub timed_out: bool,
}

impl Failure {
    pub fn other(message: impl Into<String>) -> Failure {
        Failure { sqlstate: None, message: message.into(), timed_out: false }
    }

    pub fn timeout(message: impl Into<String>) -> Failure {
        Failure { timed_out: true, ..Failure::other(message) }
    }

    pub fn of_backend(e: &BackendError) -> Failure {
        match e {
            BackendError::Server { code, message } => {
                Failure { sqlstate: Some(code.clone()), message: message.clone(), timed_out: false }
            }
            BackendError::Timeout(_) => Failure::timeout(e.to_string()),
            other => Failure::other(other.to_string()),
        }
    }

    /// tokio-postgres displays a server error as just "db error": take its message and code.
    pub fn of_pg(e: &tokio_postgres::Error) -> Failure {
        if let Some(db) = e.as_db_error() {
            let (sqlstate, message) = (Some(db.code().code().to_string()), db.message().to_string());
            return Failure { sqlstate, message, timed_out: false };
        }
        let mut message = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(cause) = source {
            message += &format!(": {cause}");
            source = cause.source();
        }
        Failure::other(message)
    }

    pub fn of_control(e: &deadpool_postgres::PoolError) -> Failure {
        match e {
            deadpool_postgres::PoolError::Backend(e) => Failure::of_pg(e),
            deadpool_postgres::PoolError::Timeout(_) => Failure::timeout(e.to_string()),
            other => Failure::other(other.to_string()),
        }
    }
}

/// Which server and login a connection is for, as the log lines name it.
#[derive(Debug, Clone)]
pub struct Target {
    pub node: String,
    /// host:port
    pub addr: String,
    pub user: String,
    pub database: String,
    /// What the connection is for: `pool` (client work) or `control` (monitor and position probes).
    pub purpose: &'static str,
}

/// The last failure seen for one target (and who saw it), so a failing connect logs once.
#[derive(Default)]
pub struct FailureLog {
    /// Set while `last` holds a failure: successes check it without taking the lock.
    failing: AtomicBool,
    last: Mutex<Option<(Failure, &'static str)>>,
}

impl FailureLog {
    /// Records a failure seen by `by` (one of the tasks sharing this log); logs it at warn when
    /// it starts a run of failures, or when `by` itself saw another failure before. A timeout
    /// during a run does not replace the error being reported (on a loaded host a failing login
    /// may also time out now and then: that must not log every flip between the two).
    pub fn failed(&self, target: &Target, by: &'static str, failure: Failure) {
        let mut last = self.last.lock().expect("failure log poisoned");
        let new = match &*last {
            None => true,
            Some((known, seen_by)) => *known != failure && *seen_by == by && !failure.timed_out,
        };
        if !new {
            return;
        }
        let Target { node, addr, user, database, purpose } = target;
        // No `sqlstate` field when the server sent no error (refused, timed out, closed).
        let sqlstate = failure.sqlstate.as_deref().map(tracing::field::display);
        tracing::warn!(%node, %addr, %user, %database, %purpose, sqlstate, error = %failure.message, "server connection failed");
        *last = Some((failure, by));
        self.failing.store(true, Ordering::Release);
    }

    /// Records a success seen by `by`; logs at info when it ends a run of failures `by` saw (a
    /// task whose own connection still works does not clear a failure another task sees).
    pub fn succeeded(&self, target: &Target, by: &'static str) {
        if !self.failing.load(Ordering::Acquire) {
            return;
        }
        let mut last = self.last.lock().expect("failure log poisoned");
        if last.as_ref().is_some_and(|(_, seen_by)| *seen_by == by) {
            *last = None;
            self.failing.store(false, Ordering::Release);
            let Target { node, addr, user, database, purpose } = target;
            tracing::info!(%node, %addr, %user, %database, %purpose, "server connection works again");
        }
    }

    /// The failure being reported now, if any.
    pub fn current(&self) -> Option<Failure> {
        self.last.lock().expect("failure log poisoned").as_ref().map(|(f, _)| f.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(code: &str) -> Failure {
        Failure { sqlstate: Some(code.into()), message: format!("error {code}"), timed_out: false }
    }

    #[test]
    fn a_failure_is_reported_once_per_change_and_cleared_by_who_saw_it() {
        let log = FailureLog::default();
        let t = Target {
            node: "n".into(),
            addr: "127.0.0.1:1".into(),
            user: "u".into(),
            database: "d".into(),
            purpose: "control",
        };
        log.succeeded(&t, "monitor");
        assert_eq!(log.current(), None);
        log.failed(&t, "monitor", f("28P01"));
        log.failed(&t, "positions", f("28P01"));
        assert_eq!(log.current(), Some(f("28P01")));
        // Another task's different failure does not replace the one being reported...
        log.failed(&t, "positions", f("53300"));
        assert_eq!(log.current(), Some(f("28P01")));
        // ... nor does its success clear it; the reporter's own change does.
        log.succeeded(&t, "positions");
        assert_eq!(log.current(), Some(f("28P01")));
        log.failed(&t, "monitor", f("57P03"));
        assert_eq!(log.current(), Some(f("57P03")));
        // A timeout does not replace a known error; it is reported when it starts a run.
        log.failed(&t, "monitor", Failure::timeout("probe timed out after 1s"));
        assert_eq!(log.current(), Some(f("57P03")));
        log.succeeded(&t, "monitor");
        assert_eq!(log.current(), None);
        log.failed(&t, "monitor", Failure::timeout("probe timed out after 1s"));
        assert_eq!(log.current(), Some(Failure::timeout("probe timed out after 1s")));
    }

    #[test]
    fn backend_errors_keep_the_servers_code() {
        let e = BackendError::Server { code: "28P01".into(), message: "password authentication failed".into() };
        assert_eq!(Failure::of_backend(&e).sqlstate.as_deref(), Some("28P01"));
        assert!(e.to_string().contains("28P01") && e.to_string().contains("password authentication failed"), "{e}");
        let io = BackendError::Io(std::io::ErrorKind::ConnectionRefused.into());
        assert_eq!(Failure::of_backend(&io), Failure::other(io.to_string()));
    }
}
