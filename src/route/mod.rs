//! SQL classification for routing: the result types, and re-exports of the classifier pieces.
//!
//! Everything here is synchronous and free of I/O. The hot path is
//! [`Classifier::classify`]: fingerprint the SQL text (no allocation), look the
//! fingerprint up in a shared cache, and only on a miss parse it with sqlparser.

mod byte_classes;
mod cache;
mod classify;
mod fallback;
mod fingerprint;
mod fingerprint_hash;
#[cfg(test)]
mod fingerprint_oracle;
mod fingerprint_scan;
mod functions;
mod keyword;
mod lexer;
mod scan;
mod session_statements;
mod token_ends;

#[cfg(test)]
mod tests;

pub use cache::{CacheStats, Classifier};
pub use classify::classify;
pub use fingerprint::{fingerprint, fingerprint_bytes, Fingerprint};
pub use functions::{FunctionCatalog, FunctionOverrides};
pub use keyword::Keyword;
pub(crate) use lexer::{Lexer, Token, TokenKind};

/// Where a statement may run. Inside an open transaction the caller keeps
/// using the transaction's server; the target matters when a transaction (or
/// an implicit one-statement transaction) starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// Must run on the leader (writes, locks, session state, anything unknown).
    Leader,
    /// Read-only: any follower that is caught up enough may run it.
    Follower,
}

/// Why a statement got its target; useful for logs and for the hint rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A plain read (SELECT, VALUES, TABLE, SHOW, EXPLAIN, COPY TO STDOUT, cursor ops).
    Read,
    /// DML, DDL, COPY FROM, CALL, DO, maintenance and other writing utilities.
    Write,
    /// Row or table locks: `SELECT ... FOR UPDATE/SHARE`, `LOCK`.
    Locking,
    /// Transaction control (`BEGIN`, `COMMIT`, `SET TRANSACTION`, ...).
    Transaction,
    /// Session state the server keeps (SET, RESET, DISCARD, LISTEN, PREPARE, ...).
    Session,
    /// A SELECT calls a function the catalog marks volatile. Soft: a follower hint wins.
    VolatileFunction,
    /// sqlparser could not parse it, but it starts like a read and names no
    /// writing keyword. Soft: a follower hint wins.
    UnparsedRead,
    /// sqlparser could not parse it and it does not look like a read.
    Unparsed,
    /// A `pgcausal.*` SET/SHOW/RESET, answered by the proxy itself.
    ProxyCommand,
    /// A routing hint comment decided the target.
    Hint,
    /// The caller saw a follower reject this statement (SQLSTATE 25006).
    Remembered,
    /// Reads state of one node or backend (statistics, locks, sequences): the leader's is the
    /// session's, a follower's is not.
    NodeLocal,
}

impl Reason {
    /// Soft reasons send a read to the leader only out of caution; a
    /// `/* pgcausal:follower */` hint may override them. Everything else is a
    /// hard requirement (a follower would reject or mis-handle the statement).
    pub fn is_soft(self) -> bool {
        matches!(self, Reason::VolatileFunction | Reason::UnparsedRead | Reason::NodeLocal)
    }
}

/// A routing hint comment (`/* pgcausal:leader */` or `/* pgcausal:follower */`)
/// placed before the first token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hint {
    Leader,
    Follower,
}

/// Transaction-control effect of the statement (for multi-statement strings: the last one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TxControl {
    None,
    Begin {
        read_only: bool,
    },
    Commit,
    Rollback,
    SetTransactionReadOnly,
    SetTransactionReadWrite,
    /// SAVEPOINT, RELEASE, ROLLBACK TO SAVEPOINT: stays inside the current transaction.
    Savepoint,
    /// PREPARE TRANSACTION: ends the transaction block on this session.
    PrepareTransaction,
}

/// Server-side session state that ties the client session to the leader backend.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Pin {
    Listen {
        channel: String,
    },
    /// A temporary table, view or sequence (they live only in that backend).
    TempTable {
        name: String,
    },
    /// Session-level `pg_advisory_lock*` / `pg_try_advisory_lock*` (not the `_xact_` ones).
    AdvisoryLock,
    /// `DECLARE ... WITH HOLD`: the cursor outlives the transaction.
    HoldCursor {
        name: String,
    },
    PrepareTransaction,
    /// Session state changed in a way the proxy cannot replay: `set_config()`
    /// with non-literal arguments, or a SET/RESET sqlparser could not read.
    UntrackedSessionState,
}

/// Releases of [`Pin`]s. Names are normalized like PostgreSQL identifiers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Unpin {
    UnlistenAll,
    Unlisten {
        channel: String,
    },
    /// Releases everything: listens, temp tables, advisory locks, hold cursors.
    DiscardAll,
    DiscardTemp,
    AdvisoryUnlockAll,
    /// DROP TABLE / VIEW / SEQUENCE; the caller checks whether any was temporary.
    DropTable {
        names: Vec<String>,
    },
    CloseCursor {
        name: String,
    },
    CloseAllCursors,
    /// COMMIT PREPARED / ROLLBACK PREPARED.
    FinishPrepared,
}

/// Session state the proxy must track or answer itself.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SessionEffect {
    /// `SET [LOCAL] name = value`. `name` is lowercased; `value` is SQL text to
    /// replay as `SET name TO value` (e.g. `a, b`, `'UTC'`, `DEFAULT`).
    Set {
        name: String,
        value: String,
        local: bool,
    },
    Reset {
        name: String,
    },
    ResetAll,
    DiscardAll,
    /// `SELECT set_config('name', 'value', is_local)` with literal arguments;
    /// `value` is the plain (unquoted) string.
    SetConfigCall {
        name: String,
        value: String,
        is_local: bool,
    },
    /// `SET pgcausal.x = v`: a proxy setting, never sent to a server. `value` is plain text.
    ProxySet {
        name: String,
        value: String,
    },
    /// `SHOW pgcausal.x`: answered by the proxy.
    ProxyShow {
        name: String,
    },
    /// `RESET pgcausal.x`: answered by the proxy.
    ProxyReset {
        name: String,
    },
}

impl SessionEffect {
    /// True for the `pgcausal.*` commands the proxy answers without a server.
    pub fn is_proxy_command(&self) -> bool {
        matches!(
            self,
            SessionEffect::ProxySet { .. } | SessionEffect::ProxyShow { .. } | SessionEffect::ProxyReset { .. }
        )
    }
}

/// The routing decision for one SQL string (one simple-query message, which may
/// hold several statements; they route as one unit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Classification {
    pub target: Target,
    pub reason: Reason,
    pub tx: TxControl,
    /// Vectors rather than options: a multi-statement string such as
    /// `SET a = 1; SET b = 2` carries several effects, and losing one would
    /// desynchronize the proxy's view of the session. Empty vectors do not allocate.
    pub pins: Vec<Pin>,
    pub unpins: Vec<Unpin>,
    pub session: Vec<SessionEffect>,
    /// The hint comment found before the first token, if any.
    pub hint: Option<Hint>,
    /// Number of statements in the string (0 for an empty query).
    pub statement_count: usize,
    /// Some statement in the string may change data (its commit must raise the session's
    /// floor), whatever reason decided the route: `BEGIN; INSERT ...; COMMIT` routes as a
    /// transaction but writes.
    pub writes: bool,
    /// The first keyword (set by the [`Classifier`]), so callers can skip work cheaply.
    pub keyword: Keyword,
    /// Calls `currval`/`lastval`: it must run where the client's `nextval` ran, or see none.
    pub sequence_state: bool,
    /// Whether this result depends only on the fingerprint and may be cached.
    /// False when it carries literal values (SET values, set_config arguments)
    /// or depends on one (`EXPLAIN (ANALYZE 'off')`).
    pub cacheable: bool,
}

impl Classification {
    pub(crate) fn new(target: Target, reason: Reason) -> Self {
        Classification {
            target,
            reason,
            tx: TxControl::None,
            pins: Vec::new(),
            unpins: Vec::new(),
            session: Vec::new(),
            hint: None,
            statement_count: 1,
            writes: false,
            keyword: Keyword::None,
            sequence_state: false,
            cacheable: true,
        }
    }

    pub(crate) fn leader(reason: Reason) -> Self {
        Self::new(Target::Leader, reason)
    }

    pub(crate) fn follower(reason: Reason) -> Self {
        Self::new(Target::Follower, reason)
    }

    /// Routes to the leader for `reason`, keeping a hard reason over a soft one.
    pub(crate) fn require_leader(&mut self, reason: Reason) {
        if self.target == Target::Follower || (self.reason.is_soft() && !reason.is_soft()) {
            self.target = Target::Leader;
            self.reason = reason;
        }
    }

    /// Folds the next statement of a multi-statement string into this one.
    pub(crate) fn merge(&mut self, next: Classification) {
        if self.statement_count == 0 {
            (self.target, self.reason) = (next.target, next.reason);
        } else if next.target == Target::Leader {
            self.require_leader(next.reason);
        }
        if next.tx != TxControl::None {
            self.tx = next.tx;
        }
        self.pins.extend(next.pins);
        self.unpins.extend(next.unpins);
        self.session.extend(next.session);
        self.statement_count += next.statement_count;
        self.writes |= next.writes;
        self.sequence_state |= next.sequence_state;
        self.cacheable &= next.cacheable;
    }

    /// True when the string has a `pgcausal.*` command in it (alone or not).
    pub fn has_proxy_command(&self) -> bool {
        self.session.iter().any(SessionEffect::is_proxy_command)
    }

    /// True when the whole string is a single `pgcausal.*` command the proxy answers itself.
    pub fn is_proxy_command(&self) -> bool {
        self.statement_count == 1 && self.session.iter().any(SessionEffect::is_proxy_command)
    }

    /// Whether this statement's own route says it may change data.
    pub(crate) fn route_writes(&self) -> bool {
        self.target == Target::Leader
            && matches!(
                self.reason,
                Reason::Write
                    | Reason::Locking
                    | Reason::VolatileFunction
                    | Reason::Unparsed
                    | Reason::UnparsedRead
                    | Reason::Remembered
            )
    }

    /// The first pin, for callers that only need to know whether to stick to the leader.
    pub fn pin(&self) -> Option<&Pin> {
        self.pins.first()
    }
}
