//! Keyword-level routing for statements sqlparser 0.63 cannot parse (or need not parse).
//!
//! Verified against sqlparser 0.63 with PostgreSqlDialect: it rejects `DO`,
//! `CHECKPOINT`, `REFRESH MATERIALIZED VIEW`, `ALTER SYSTEM`, `PREPARE
//! TRANSACTION`, `COMMIT/ROLLBACK PREPARED`, `VACUUM ANALYZE t` and
//! `VACUUM (options)`, `TABLE t`, `MOVE`, `FETCH c` (no direction),
//! `REINDEX`, `CLUSTER`, `SECURITY LABEL`, `IMPORT FOREIGN SCHEMA`,
//! `SELECT ... FOR NO KEY UPDATE / FOR KEY SHARE / FOR UPDATE OF a, b`, and
//! `BEGIN / START TRANSACTION ... DEFERRABLE`. (LISTEN, UNLISTEN, NOTIFY,
//! DISCARD ALL and `SHOW pgcausal.x` do parse.)

use crate::route::scan::Facts;
use crate::route::{Classification, Pin, Reason, SessionEffect, Target, TxControl, Unpin};

/// First keywords that always mean the leader: plain DML (never worth parsing)
/// and maintenance utilities sqlparser rejects.
#[rustfmt::skip]
const LEADER_KEYWORDS: &[&str] = &[
    "insert", "update", "delete", "merge",
    "do", "checkpoint", "refresh", "vacuum", "analyze", "reindex", "cluster",
];

/// Decides from the leading keywords alone, before parsing. Covers statements
/// sqlparser rejects outright, plus plain DML: INSERT/UPDATE/DELETE/MERGE go to
/// the leader whatever follows, so a multi-megabyte bulk INSERT is never parsed.
pub(crate) fn before_parse(facts: &Facts) -> Option<Classification> {
    let is = |i: usize, kw: &str| facts.lead_is(i, kw);
    let leader = Classification::leader;
    let c = if LEADER_KEYWORDS.iter().any(|kw| is(0, kw)) || (is(0, "alter") && is(1, "system")) {
        leader(Reason::Write)
    } else if is(0, "prepare") && is(1, "transaction") {
        let mut c = leader(Reason::Transaction);
        c.tx = TxControl::PrepareTransaction;
        c.pins.push(Pin::PrepareTransaction);
        c
    } else if (is(0, "commit") || is(0, "rollback")) && is(1, "prepared") {
        let mut c = leader(Reason::Transaction);
        c.unpins.push(Unpin::FinishPrepared);
        c
    } else if is(0, "reset") && is(1, "time") && is(2, "zone") {
        // PostgreSQL's spelling of RESET timezone, which sqlparser does not read.
        let mut c = leader(Reason::Session);
        c.session.push(SessionEffect::Reset { name: "timezone".into() });
        c
    } else if is(0, "table") || is(0, "fetch") || is(0, "move") {
        // TABLE t is SELECT * FROM t; FETCH/MOVE follow their cursor's transaction.
        Classification::follower(Reason::Read)
    } else {
        return None;
    };
    Some(c)
}

/// Routes a statement sqlparser rejected. Only shapes known to be reads may
/// stay follower-eligible (soft reasons); everything else goes to the leader.
pub(crate) fn after_parse_error(facts: &Facts) -> Classification {
    let is = |i: usize, kw: &str| facts.lead_is(i, kw);
    if is(0, "begin") || (is(0, "start") && is(1, "transaction")) {
        // e.g. BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE
        let read_only = facts.read_only_mode == Some(true);
        let target = if read_only { Target::Follower } else { Target::Leader };
        let mut c = Classification::new(target, Reason::Transaction);
        c.tx = TxControl::Begin { read_only };
        return c;
    }
    if is(0, "set") || is(0, "reset") {
        // Session state changed in a way we could not read: stay on the leader.
        let mut c = Classification::leader(Reason::Session);
        c.pins.push(Pin::UntrackedSessionState);
        return c;
    }
    let starts_like_read = ["select", "with", "values", "show"].iter().any(|kw| is(0, kw))
        || facts.lead[0].is_some_and(|t| t.is_punct(b'('));
    if facts.locking_clause {
        Classification::leader(Reason::Locking)
    } else if starts_like_read && !facts.write_words {
        Classification::leader(Reason::UnparsedRead)
    } else {
        Classification::leader(Reason::Unparsed)
    }
}

#[cfg(test)]
mod tests {
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::parser::Parser;

    fn parses(sql: &str) -> bool {
        Parser::parse_sql(&PostgreSqlDialect {}, sql).is_ok()
    }

    /// Pins down the sqlparser 0.63 gaps this module exists for. If an upgrade
    /// makes one parse, the AST path takes over and its fallback can go.
    #[test]
    fn sqlparser_gaps() {
        let rejected = [
            "DO $$ BEGIN PERFORM 1; END $$",
            "SELECT * FROM t FOR NO KEY UPDATE",
            "SELECT * FROM t FOR KEY SHARE",
            "SELECT * FROM t FOR UPDATE OF t, u",
            "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE",
            "START TRANSACTION ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE",
            "VACUUM ANALYZE t",
            "VACUUM (VERBOSE, ANALYZE) t",
            "TABLE t",
            "ALTER SYSTEM SET work_mem = '1MB'",
            "CHECKPOINT",
            "PREPARE TRANSACTION 'x'",
            "COMMIT PREPARED 'x'",
            "ROLLBACK PREPARED 'x'",
            "REFRESH MATERIALIZED VIEW mv",
            "FETCH c",
            "MOVE 10 IN c",
            "REINDEX TABLE t",
            "CLUSTER t",
        ];
        for sql in rejected {
            assert!(!parses(sql), "sqlparser now parses {sql:?}: revisit the fallback");
        }
        let accepted =
            ["LISTEN ch", "UNLISTEN *", "NOTIFY ch, 'x'", "DISCARD ALL", "SHOW pgcausal.lsn", "BEGIN READ ONLY"];
        for sql in accepted {
            assert!(parses(sql), "sqlparser rejects {sql:?}");
        }
    }
}
