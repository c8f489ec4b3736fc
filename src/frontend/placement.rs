//! Where a unit of work runs (leader or follower) from its classification and the session's
//! override, and which server errors make a read that sent nothing yet safe to run elsewhere.

use super::proxy_settings::RouteOverride;
use crate::route::{Classification, Target, TxControl};

/// The kind of node a unit of work needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    Leader,
    Follower,
}

/// Where a statement with this classification runs, given the session's override.
/// `in_deferred_begin`: a plain BEGIN is waiting for its first statement to pick the node.
pub fn want(c: &Classification, route: RouteOverride, in_deferred_begin: bool) -> Want {
    let hard_leader = c.target == Target::Leader && !c.reason.is_soft();
    match route {
        RouteOverride::Leader => return Want::Leader,
        RouteOverride::Follower if !hard_leader => return Want::Follower,
        _ => {}
    }
    if in_deferred_begin {
        return if c.tx == TxControl::SetTransactionReadOnly { Want::Follower } else { Want::Leader };
    }
    match (c.tx, c.target) {
        (TxControl::Begin { read_only }, _) => {
            if read_only {
                Want::Follower
            } else {
                Want::Leader
            }
        }
        (_, Target::Follower) => Want::Follower,
        (_, Target::Leader) => Want::Leader,
    }
}

/// Server errors after which a read that sent nothing to the client yet can run again elsewhere:
/// `Some(true)` means "on the leader" (the follower refused a write), `Some(false)` "on another node".
pub fn retry_on(code: &[u8; 5]) -> Option<bool> {
    use crate::error::sqlstate::*;
    const ELSEWHERE: [[u8; 5]; 4] =
        [bytes(ADMIN_SHUTDOWN), bytes(CRASH_SHUTDOWN), bytes(CANNOT_CONNECT_NOW), bytes(SERIALIZATION_FAILURE)];
    if *code == bytes(READ_ONLY_SQL_TRANSACTION) {
        Some(true)
    } else if ELSEWHERE.contains(code) || code.starts_with(CONNECTION_EXCEPTION_CLASS.as_bytes()) {
        Some(false) // shutdown, conflict with recovery, connection exception
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::{classify, FunctionCatalog};

    fn c(sql: &str) -> Classification {
        classify(sql, &FunctionCatalog::builtin())
    }

    #[test]
    fn wants_follow_classification_overrides_and_deferred_begin() {
        let auto = RouteOverride::Auto;
        assert_eq!(want(&c("SELECT 1"), auto, false), Want::Follower);
        assert_eq!(want(&c("INSERT INTO t VALUES (1)"), auto, false), Want::Leader);
        assert_eq!(want(&c("BEGIN READ ONLY"), auto, false), Want::Follower);
        assert_eq!(want(&c("BEGIN"), auto, false), Want::Leader);
        assert_eq!(want(&c("SET TRANSACTION READ ONLY"), auto, true), Want::Follower);
        assert_eq!(want(&c("SELECT 1"), auto, true), Want::Leader);
        assert_eq!(want(&c("SELECT 1"), RouteOverride::Leader, false), Want::Leader);
        assert_eq!(want(&c("DELETE FROM t"), RouteOverride::Follower, false), Want::Leader);
    }

    #[test]
    fn retryable_errors() {
        assert_eq!(retry_on(b"25006"), Some(true));
        assert_eq!(retry_on(b"08006"), Some(false));
        assert_eq!(retry_on(b"23505"), None);
    }
}
