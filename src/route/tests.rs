//! Table-driven routing tests: each statement with its expected target, transaction, pins and session effects.

use std::sync::Arc;

use crate::route::{
    classify, fingerprint, Classification, Classifier, FunctionCatalog, FunctionOverrides, Pin, Reason, SessionEffect,
    Target, TxControl, Unpin,
};

/// Expected classification; fields left unset must be empty / `TxControl::None`.
#[derive(Clone)]
struct Expect {
    target: Target,
    reason: Option<Reason>,
    tx: TxControl,
    pins: Vec<Pin>,
    unpins: Vec<Unpin>,
    session: Vec<SessionEffect>,
}

fn leader() -> Expect {
    Expect { target: Target::Leader, reason: None, tx: TxControl::None, pins: vec![], unpins: vec![], session: vec![] }
}

fn follower() -> Expect {
    Expect { target: Target::Follower, ..leader() }
}

impl Expect {
    fn reason(mut self, reason: Reason) -> Self {
        self.reason = Some(reason);
        self
    }
    fn tx(mut self, tx: TxControl) -> Self {
        self.tx = tx;
        self
    }
    fn pin(mut self, pin: Pin) -> Self {
        self.pins.push(pin);
        self
    }
    fn unpin(mut self, unpin: Unpin) -> Self {
        self.unpins.push(unpin);
        self
    }
    fn effect(mut self, effect: SessionEffect) -> Self {
        self.session.push(effect);
        self
    }
}

fn set(name: &str, value: &str, local: bool) -> SessionEffect {
    SessionEffect::Set { name: name.into(), value: value.into(), local }
}

fn temp(name: &str) -> Pin {
    Pin::TempTable { name: name.into() }
}

const JOIN_200: &str = "SELECT o.id, o.created_at, c.name, c.email, sum(li.qty * li.price) AS total \
     FROM orders o JOIN customers c ON c.id = o.customer_id \
     LEFT JOIN line_items li ON li.order_id = o.id \
     WHERE o.created_at > $1 AND c.region = 'EU' GROUP BY 1, 2, 3, 4";

fn cases() -> Vec<(&'static str, Expect)> {
    use Reason::*;
    use TxControl::*;
    vec![
        // Plain reads.
        ("SELECT 1", follower().reason(Read)),
        ("SeLeCt 1", follower()),
        ("SELECT abalance FROM pgbench_accounts WHERE aid = 123;", follower()),
        ("select abalance from pgbench_accounts where aid = 123", follower()),
        ("SELECT * FROM t WHERE id = $1", follower()),
        ("SELECT * FROM t WHERE id = $1 AND name = $2", follower()),
        ("VALUES (1),(2)", follower()),
        ("TABLE t", follower()),
        ("SHOW TimeZone", follower()),
        ("SHOW ALL", follower()),
        ("SHOW TRANSACTION ISOLATION LEVEL", follower()),
        ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 10) SELECT * FROM r", follower()),
        (JOIN_200, follower()),
        ("SELECT a FROM t UNION SELECT b FROM u", follower()),
        ("SELECT count(*) FROM t GROUP BY a HAVING count(*) > 1 ORDER BY 1 LIMIT 10", follower()),
        ("SELECT now(), lower('X'), random()", follower()),
        ("SELECT app.stable_fn(1)", follower()),
        ("SELECT 'nextval(1)' AS s", follower()),
        ("SELECT * FROM t -- nextval('s')", follower()),
        ("SELECT * FROM t /* FOR UPDATE */", follower()),
        ("(SELECT 1)", follower()),
        ("SELECT * FROM t WHERE a IN (SELECT b FROM u)", follower()),
        ("SELECT $q$ DELETE FROM t; $q$", follower()),
        ("SELECT E'it\\'s; DELETE FROM t'", follower()),
        ("SELECT * FROM generate_series(1, 10)", follower()),
        ("SELECT t.a->>'k', a::text[] FROM t WHERE ts > now() - interval '1 day'", follower()),
        ("SELECT other.write_fn()", follower()),
        // Row and table locks.
        ("SELECT * FROM t FOR UPDATE", leader().reason(Locking)),
        ("SELECT * FROM t FOR NO KEY UPDATE", leader().reason(Locking)),
        ("SELECT * FROM t FOR SHARE", leader().reason(Locking)),
        ("SELECT * FROM t FOR KEY SHARE", leader().reason(Locking)),
        ("SELECT * FROM t WHERE id = 1 FOR UPDATE SKIP LOCKED", leader()),
        ("SELECT * FROM t FOR UPDATE OF t, u NOWAIT", leader().reason(Locking)),
        ("SELECT * FROM (SELECT * FROM t FOR UPDATE) s", leader()),
        ("LOCK TABLE t IN ACCESS EXCLUSIVE MODE", leader().reason(Locking)),
        // Writes.
        ("UPDATE pgbench_accounts SET abalance = abalance + -12 WHERE aid = 5;", leader().reason(Write)),
        ("UPDATE pgbench_tellers SET tbalance = tbalance + -12 WHERE tid = 3;", leader()),
        (
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (3, 1, 5, -12, CURRENT_TIMESTAMP);",
            leader(),
        ),
        ("DELETE FROM t WHERE id = $1", leader()),
        ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = s.a", leader()),
        ("insert into t values (1) on conflict (id) do update set a = excluded.a", leader()),
        ("WITH x AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM x", leader().reason(Write)),
        ("WITH x AS (UPDATE t SET a = 1 RETURNING *) SELECT * FROM x", leader()),
        ("WITH x AS (DELETE FROM t RETURNING *) SELECT count(*) FROM x", leader()),
        ("WITH x AS (SELECT 1 AS a) INSERT INTO t SELECT a FROM x", leader()),
        ("WITH a AS (SELECT 1), b AS (DELETE FROM t RETURNING id) SELECT * FROM a, b", leader()),
        ("SELECT * INTO new_t FROM t", leader().reason(Write)),
        ("SELECT * INTO TEMP tmp_t FROM t", leader().pin(temp("tmp_t"))),
        ("CREATE TABLE x AS SELECT * FROM t", leader()),
        ("CREATE TABLE x (a int)", leader()),
        ("CREATE TEMP TABLE tmp (a int)", leader().pin(temp("tmp"))),
        ("CREATE TEMPORARY TABLE Tmp2 AS SELECT 1", leader().pin(temp("tmp2"))),
        ("CREATE TEMP VIEW v AS SELECT 1", leader().pin(temp("v"))),
        ("CREATE TEMP SEQUENCE s", leader().pin(temp("s"))),
        ("CREATE TABLE pg_temp.scratch (a int)", leader().pin(temp("scratch"))),
        (
            "DROP TABLE tmp, public.\"Other\"",
            leader().unpin(Unpin::DropTable { names: vec!["tmp".into(), "Other".into()] }),
        ),
        ("ALTER TABLE t ADD COLUMN c int", leader()),
        ("CREATE INDEX CONCURRENTLY i ON t (a)", leader()),
        ("TRUNCATE t", leader()),
        ("COMMENT ON TABLE t IS 'x'", leader()),
        ("GRANT SELECT ON t TO u", leader()),
        ("REVOKE SELECT ON t FROM u", leader()),
        ("CALL p(1)", leader()),
        ("DO $$ BEGIN PERFORM 1; END $$", leader().reason(Write)),
        ("DO LANGUAGE plpgsql $$ BEGIN UPDATE t SET a = 1; END $$", leader()),
        ("VACUUM ANALYZE t", leader()),
        ("VACUUM", leader()),
        ("VACUUM (VERBOSE, ANALYZE) t", leader()),
        ("ANALYZE t", leader()),
        ("REFRESH MATERIALIZED VIEW mv", leader()),
        ("REFRESH MATERIALIZED VIEW CONCURRENTLY mv", leader()),
        ("ALTER SYSTEM SET work_mem = '1MB'", leader()),
        ("CHECKPOINT", leader()),
        ("REINDEX TABLE t", leader()),
        ("CLUSTER t", leader()),
        ("CREATE FUNCTION f() RETURNS int AS $$ SELECT 1 $$ LANGUAGE sql", leader()),
        ("NOTIFY ch, 'payload'", leader()),
        ("CREATE EXTENSION pgcrypto", leader()),
        ("SECURITY LABEL ON TABLE t IS 'x'", leader().reason(Unparsed)),
        // Function calls.
        ("SELECT nextval('s')", leader().reason(VolatileFunction)),
        ("SELECT setval('s', 10)", leader()),
        ("SELECT currval('s')", leader()),
        ("SELECT pg_catalog.nextval('s')", leader()),
        ("SELECT NEXTVAL('s')", leader()),
        ("SELECT pg_advisory_lock(1)", leader().reason(Session).pin(Pin::AdvisoryLock)),
        ("/* pgcausal:follower */ SELECT pg_advisory_lock(1)", leader().pin(Pin::AdvisoryLock)),
        ("SELECT pg_try_advisory_lock(1, 2)", leader().pin(Pin::AdvisoryLock)),
        ("SELECT pg_advisory_xact_lock(1)", leader().reason(VolatileFunction)),
        ("SELECT pg_advisory_unlock_all()", leader().unpin(Unpin::AdvisoryUnlockAll)),
        ("SELECT app.write_fn()", leader().reason(VolatileFunction)),
        ("SELECT write_fn(1)", leader()),
        ("SELECT APP.WRITE_FN()", leader()),
        ("SELECT * FROM t WHERE id = (SELECT max(id) FROM u WHERE nextval('s') > 0)", leader()),
        ("SELECT txid_current()", leader()),
        ("SELECT pg_notify('ch', 'x')", leader()),
        ("SELECT lo_create(0)", leader()),
        // Volatile in pg_proc, but only introspection: follower-safe by the built-in read-only list.
        ("SELECT pg_is_in_recovery()", follower()),
        (
            "SELECT set_config('search_path','x',false)",
            follower().effect(SessionEffect::SetConfigCall {
                name: "search_path".into(),
                value: "x".into(),
                is_local: false,
            }),
        ),
        ("SELECT set_config('app.user', $1, true)", leader().reason(Session).pin(Pin::UntrackedSessionState)),
        // EXPLAIN.
        ("EXPLAIN DELETE FROM t", follower().reason(Read)),
        ("EXPLAIN ANALYZE DELETE FROM t", leader().reason(Write)),
        ("EXPLAIN ANALYZE SELECT * FROM t", follower()),
        ("EXPLAIN (ANALYZE, BUFFERS) UPDATE t SET a = 1", leader()),
        ("EXPLAIN (ANALYZE false) DELETE FROM t", follower()),
        ("EXPLAIN (ANALYZE 'off') DELETE FROM t", follower()),
        ("EXPLAIN (ANALYZE on, COSTS off) DELETE FROM t", leader()),
        ("EXPLAIN SELECT nextval('s')", follower()),
        ("EXPLAIN ANALYZE SELECT nextval('s')", leader()),
        ("EXPLAIN VERBOSE SELECT 1", follower()),
        // COPY.
        ("COPY t TO STDOUT", follower()),
        ("COPY t (a, b) TO STDOUT WITH (FORMAT csv)", follower()),
        ("COPY t FROM STDIN", leader()),
        ("COPY (SELECT 1) TO STDOUT", follower()),
        ("COPY (SELECT nextval('s')) TO STDOUT", leader()),
        ("COPY (DELETE FROM t RETURNING *) TO STDOUT", leader()),
        ("COPY t TO '/tmp/x.csv'", leader()),
        // Transactions.
        ("BEGIN", leader().reason(Transaction).tx(Begin { read_only: false })),
        ("BEGIN READ ONLY", follower().reason(Transaction).tx(Begin { read_only: true })),
        ("BEGIN TRANSACTION READ WRITE", leader().tx(Begin { read_only: false })),
        ("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", follower().tx(Begin { read_only: true })),
        ("START TRANSACTION", leader().tx(Begin { read_only: false })),
        ("START TRANSACTION READ ONLY", follower().tx(Begin { read_only: true })),
        (
            "START TRANSACTION ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE",
            follower().tx(Begin { read_only: true }),
        ),
        ("BEGIN ISOLATION LEVEL SERIALIZABLE, READ WRITE, NOT DEFERRABLE", leader().tx(Begin { read_only: false })),
        ("SET TRANSACTION READ ONLY", follower().tx(SetTransactionReadOnly)),
        ("SET TRANSACTION READ WRITE", leader().tx(SetTransactionReadWrite)),
        ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", leader()),
        ("COMMIT", follower().reason(Transaction).tx(Commit)),
        ("END", follower().tx(Commit)),
        ("ROLLBACK", follower().tx(Rollback)),
        ("ABORT", follower().tx(Rollback)),
        ("COMMIT AND CHAIN", follower().tx(Commit)),
        ("SAVEPOINT s", follower().tx(Savepoint)),
        ("RELEASE SAVEPOINT s", follower().tx(Savepoint)),
        ("ROLLBACK TO SAVEPOINT s", follower().tx(Savepoint)),
        ("PREPARE TRANSACTION 'x'", leader().tx(PrepareTransaction).pin(Pin::PrepareTransaction)),
        ("COMMIT PREPARED 'x'", leader().unpin(Unpin::FinishPrepared)),
        ("ROLLBACK PREPARED 'x'", leader().unpin(Unpin::FinishPrepared)),
        // Session state.
        ("SET search_path = a,b", leader().reason(Session).effect(set("search_path", "a, b", false))),
        ("SET search_path TO \"$user\", public", leader().effect(set("search_path", "\"$user\", public", false))),
        ("SET LOCAL statement_timeout = 1000", leader().effect(set("statement_timeout", "1000", true))),
        ("SET application_name = 'my app'", leader().effect(set("application_name", "'my app'", false))),
        ("SET TIME ZONE 'UTC'", leader().effect(set("timezone", "'UTC'", false))),
        (
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
            leader().effect(set("default_transaction_read_only", "on", false)),
        ),
        ("RESET ALL", leader().effect(SessionEffect::ResetAll)),
        ("RESET search_path", leader().effect(SessionEffect::Reset { name: "search_path".into() })),
        ("DISCARD ALL", leader().effect(SessionEffect::DiscardAll).unpin(Unpin::DiscardAll)),
        ("DISCARD TEMP", leader().unpin(Unpin::DiscardTemp)),
        (
            "SET pgcausal.route = leader",
            leader()
                .reason(ProxyCommand)
                .effect(SessionEffect::ProxySet { name: "pgcausal.route".into(), value: "leader".into() }),
        ),
        (
            "set PGCAUSAL.consistency to 'causal'",
            leader().effect(SessionEffect::ProxySet { name: "pgcausal.consistency".into(), value: "causal".into() }),
        ),
        (
            "SHOW pgcausal.lsn",
            leader().reason(ProxyCommand).effect(SessionEffect::ProxyShow { name: "pgcausal.lsn".into() }),
        ),
        ("RESET pgcausal.route", leader().effect(SessionEffect::ProxyReset { name: "pgcausal.route".into() })),
        ("LISTEN ch", leader().pin(Pin::Listen { channel: "ch".into() })),
        ("UNLISTEN *", leader().unpin(Unpin::UnlistenAll)),
        ("UNLISTEN Ch", leader().unpin(Unpin::Unlisten { channel: "ch".into() })),
        // Cursors and SQL-level prepared statements.
        ("DECLARE c CURSOR WITH HOLD FOR SELECT * FROM t", leader().pin(Pin::HoldCursor { name: "c".into() })),
        ("DECLARE c CURSOR FOR SELECT * FROM t", follower()),
        ("DECLARE c CURSOR FOR SELECT * FROM t FOR UPDATE", leader()),
        ("FETCH 10 FROM c", follower()),
        ("FETCH c", follower()),
        ("MOVE 10 IN c", follower()),
        ("CLOSE c", follower().unpin(Unpin::CloseCursor { name: "c".into() })),
        ("CLOSE ALL", follower().unpin(Unpin::CloseAllCursors)),
        ("PREPARE p AS SELECT 1", leader()),
        ("EXECUTE p(1)", leader()),
        ("DEALLOCATE p", leader()),
        // Comments and hints.
        ("/* pgcausal:leader */ SELECT 1", leader().reason(Hint)),
        ("   /* pgcausal:follower */ SELECT nextval('s')", follower().reason(Hint)),
        ("-- note\n/* pgcausal:follower */ SELECT app.write_fn()", follower().reason(Hint)),
        ("/* pgcausal:follower */ UPDATE t SET a = 1", leader().reason(Write)),
        ("/* pgcausal:follower */ SELECT * FROM t FOR UPDATE", leader().reason(Locking)),
        ("/* pgcausal:follower */ BEGIN", leader().tx(Begin { read_only: false })),
        ("SELECT 1 /* pgcausal:leader */", follower()),
        ("/* hello */ -- world\n SELECT 1", follower()),
        ("\n\t/* pgcausal:leader */\n-- x\nSHOW TimeZone", leader().reason(Hint)),
        // Statements sqlparser cannot parse.
        ("SELECT * FROM t WHERE a &&& b ~~~ (((", leader().reason(UnparsedRead)),
        ("/* pgcausal:follower */ SELECT * FROM t WHERE a &&& b ~~~ (((", follower().reason(Hint)),
        ("SELECT * INTO x FROM t WHERE a &&& (", leader().reason(Unparsed)),
        ("FROBNICATE everything", leader().reason(Unparsed)),
        ("IMPORT FOREIGN SCHEMA s FROM SERVER x INTO y", leader()),
        // Multi-statement strings route as one unit.
        ("SELECT 1; INSERT INTO t VALUES (1)", leader().reason(Write)),
        ("SELECT 1; SELECT 2;", follower()),
        ("BEGIN; UPDATE t SET a = 1; COMMIT", leader().tx(Commit)),
        ("BEGIN READ ONLY; SELECT 1", follower().tx(Begin { read_only: true })),
        (
            "SET a.b = 1; SET search_path = x",
            leader().effect(set("a.b", "1", false)).effect(set("search_path", "x", false)),
        ),
        ("SELECT 1; LISTEN ch", leader().pin(Pin::Listen { channel: "ch".into() })),
        ("", follower()),
    ]
}

fn test_catalog() -> FunctionCatalog {
    let rows = [
        ("app", "write_fn", 'v'),
        ("app", "stable_fn", 's'),
        ("pg_catalog", "random", 'v'),
        ("pg_catalog", "nextval", 'v'),
        ("pg_catalog", "lower", 'i'),
    ];
    FunctionCatalog::from_pg_proc(rows, &FunctionOverrides::default())
}

fn check(sql: &str, got: &Classification, want: &Expect) {
    let ctx = format!("{sql:?} => {got:?}");
    assert_eq!(got.target, want.target, "target of {ctx}");
    if let Some(reason) = want.reason {
        assert_eq!(got.reason, reason, "reason of {ctx}");
    }
    assert_eq!(got.tx, want.tx, "tx of {ctx}");
    assert_eq!(got.pins, want.pins, "pins of {ctx}");
    assert_eq!(got.unpins, want.unpins, "unpins of {ctx}");
    assert_eq!(got.session, want.session, "session of {ctx}");
}

#[test]
fn routing_table() {
    let catalog = test_catalog();
    let cases = cases();
    assert!(cases.len() >= 100, "only {} cases", cases.len());
    for (sql, want) in &cases {
        check(sql, &classify(sql, &catalog), want);
    }
}

#[test]
fn cache_agrees_with_classify() {
    let classifier = Classifier::new(1000, Arc::new(test_catalog()));
    for round in 0..2 {
        for (sql, want) in cases() {
            let cached = classifier.classify(sql);
            check(sql, &cached, &want);
            let mut direct = classify(sql, &classifier.catalog());
            direct.keyword = crate::route::fingerprint(sql).first_keyword; // only the cache sets it
            assert_eq!(*cached, direct, "round {round}: {sql:?}");
        }
    }
    assert!(classifier.stats().hits > 0);
}

#[test]
fn cacheability() {
    let catalog = test_catalog();
    let cacheable = |sql: &str| classify(sql, &catalog).cacheable;
    assert!(cacheable("SELECT abalance FROM pgbench_accounts WHERE aid = 1"));
    assert!(cacheable("/* pgcausal:follower */ SELECT nextval('s')"));
    assert!(cacheable("RESET search_path"));
    assert!(cacheable("SHOW pgcausal.lsn"));
    assert!(cacheable("LISTEN ch"));
    assert!(cacheable("SELECT * FROM t WHERE a &&& b ~~~ ((("));
    assert!(!cacheable("SET search_path = a"));
    assert!(!cacheable("SET pgcausal.route = leader"));
    assert!(!cacheable("SELECT set_config('a', 'b', false)"));
    assert!(!cacheable("SELECT 1; SET x = 1"));
    assert!(!cacheable("EXPLAIN (ANALYZE 'off') DELETE FROM t"));
}

#[test]
fn statement_counts_and_proxy_commands() {
    let catalog = test_catalog();
    let count = |sql: &str| classify(sql, &catalog).statement_count;
    assert_eq!(count(""), 0);
    assert_eq!(count("-- only a comment"), 0);
    assert_eq!(count("SELECT 1;"), 1);
    assert_eq!(count("SELECT 1; SELECT 2; ; SELECT 3"), 3);
    assert!(classify("SHOW pgcausal.lsn", &catalog).is_proxy_command());
    assert!(!classify("SHOW pgcausal.lsn; SELECT 1", &catalog).is_proxy_command());
    assert!(!classify("SHOW work_mem", &catalog).is_proxy_command());
}

#[test]
fn classifier_is_shareable() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Classifier>();
    assert_send_sync::<Arc<Classification>>();
}

#[test]
fn builtin_catalog_is_safe_before_loading() {
    let catalog = FunctionCatalog::builtin();
    assert_eq!(classify("SELECT nextval('s')", &catalog).target, Target::Leader);
    assert_eq!(classify("SELECT random()", &catalog).target, Target::Follower);
}

#[test]
fn fingerprint_groups_pgbench_statements() {
    let a = fingerprint("SELECT abalance FROM pgbench_accounts WHERE aid = 123;");
    let b = fingerprint("SELECT abalance FROM pgbench_accounts WHERE aid = 9;");
    assert_eq!(a, b);
    let u1 = fingerprint("UPDATE pgbench_accounts SET abalance = abalance + -12 WHERE aid = 5;");
    let u2 = fingerprint("UPDATE pgbench_accounts SET abalance = abalance + 4711 WHERE aid = 77;");
    assert_eq!(u1.hash, u2.hash);
    assert_ne!(a.hash, u1.hash);
}

#[test]
fn writes_are_seen_inside_transactions_and_multi_statement_strings() {
    let catalog = FunctionCatalog::builtin();
    let writes = |sql: &str| classify(sql, &catalog).writes;
    assert!(writes("BEGIN; INSERT INTO t VALUES (1); COMMIT"));
    assert!(writes("SET search_path = public; UPDATE t SET v = 1"));
    assert!(writes("SELECT nextval('s')"));
    assert!(writes("SELECT * FROM t FOR UPDATE"));
    assert!(!writes("SELECT 1"));
    assert!(!writes("BEGIN"));
    assert!(!writes("SET search_path = public"));
    assert!(!writes("BEGIN READ ONLY; SELECT 1; COMMIT"));
}

#[test]
fn node_local_state_and_sequence_calls() {
    let catalog = FunctionCatalog::builtin();
    for sql in [
        "SELECT last_value, is_called FROM seq",
        "SELECT * FROM pg_stat_activity",
        "SELECT status FROM pg_catalog.pg_stat_wal_receiver",
        "SELECT name FROM pg_prepared_statements",
        "SELECT count(*) FROM pg_locks",
    ] {
        let c = classify(sql, &catalog);
        assert_eq!((c.target, c.reason), (Target::Leader, Reason::NodeLocal), "{sql}");
    }
    assert!(classify("SELECT currval('s')", &catalog).sequence_state);
    assert!(classify("SELECT pg_catalog.lastval()", &catalog).sequence_state);
    assert!(!classify("SELECT nextval('s')", &catalog).sequence_state);
    assert_eq!(classify("SELECT pgstat FROM t", &catalog).target, Target::Follower);
    let reset = classify("RESET TIME ZONE", &catalog);
    assert_eq!(reset.session, vec![SessionEffect::Reset { name: "timezone".into() }]);
}
