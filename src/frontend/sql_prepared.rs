//! SQL-level PREPARE/EXECUTE/DEALLOCATE under transaction pooling: the proxy keeps each client's
//! PREPARE texts and which names each server connection holds, so an EXECUTE re-prepares the
//! statement on whatever connection runs it, and a PREPARE first drops another client's namesake.

use crate::backend::sql_statements::ServerSqlStatements;
use crate::error::ProxyError;
use crate::lexical::quote_ident;
use crate::route::{Lexer, Token, TokenKind};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

/// What one simple-query string does with SQL-level prepared statements
/// (only single-statement strings are handled; multi-statement strings return Other).
#[derive(Debug, PartialEq, Eq)]
pub enum SqlPrepare<'a> {
    /// `name` normalized like PostgreSQL; `sql` is the client's whole query string (one statement),
    /// replayed as sent so `pg_prepared_statements` shows what PostgreSQL would.
    Prepare {
        name: String,
        sql: &'a str,
    },
    /// EXECUTE name, or EXPLAIN [options] EXECUTE name.
    Execute {
        name: String,
    },
    Deallocate {
        name: String,
    },
    DeallocateAll,
    Other,
}

impl SqlPrepare<'_> {
    /// The statement name, to undo bookkeeping when the server reports an error.
    pub fn name(&self) -> Option<&str> {
        match self {
            Self::Prepare { name, .. } | Self::Execute { name } | Self::Deallocate { name } => Some(name),
            _ => None,
        }
    }
}

/// Reads the first keywords; strings starting with PREPARE, EXECUTE, EXPLAIN or DEALLOCATE are scanned to their end.
pub fn inspect(sql: &str) -> SqlPrepare<'_> {
    let semicolon = |t: &Token| t.kind == TokenKind::Semicolon;
    let mut tokens = Lexer::new(sql).skip_while(semicolon);
    let Some(first) = tokens.next() else { return SqlPrepare::Other };
    let kinds = ["prepare", "execute", "explain", "deallocate"];
    let Some(kind) = kinds.into_iter().find(|k| first.is_word(k)) else { return SqlPrepare::Other };
    let rest: Vec<Token> = tokens.by_ref().take_while(|t| !semicolon(t)).collect();
    if tokens.any(|t| !semicolon(&t)) {
        return SqlPrepare::Other; // several statements
    }
    let is = |i: usize, kw: &str| rest.get(i).is_some_and(|t| t.text.eq_ignore_ascii_case(kw.as_bytes()));
    let name = |i: usize| rest.get(i).and_then(|t| ident(sql, t));
    let query = match kind {
        // `(` or AS must follow the name: rules out PREPARE TRANSACTION 'gid' ("transaction" is a valid name).
        "prepare" => {
            (is(1, "(") || is(1, "as")).then(|| name(0)).flatten().map(|name| SqlPrepare::Prepare { name, sql })
        }
        "execute" => name(0).map(|name| SqlPrepare::Execute { name }),
        "explain" => {
            // Skip the parenthesized options, if any (they contain no parentheses).
            let close = rest.iter().position(|t| t.is_punct(b')'));
            let mut i = if is(0, "(") { close.map_or(rest.len(), |j| j + 1) } else { 0 };
            while is(i, "analyze") || is(i, "analyse") || is(i, "verbose") {
                i += 1;
            }
            is(i, "execute").then(|| name(i + 1)).flatten().map(|name| SqlPrepare::Execute { name })
        }
        _ => {
            // `DEALLOCATE prepare` alone drops a statement named "prepare".
            let i = usize::from(is(0, "prepare") && rest.len() > 1);
            if is(i, "all") {
                Some(SqlPrepare::DeallocateAll)
            } else {
                name(i).map(|name| SqlPrepare::Deallocate { name })
            }
        }
    };
    query.unwrap_or(SqlPrepare::Other)
}

/// A statement name as PostgreSQL reads it: unquoted lowercased, quoted kept, truncated to 63 bytes.
fn ident(sql: &str, token: &Token) -> Option<String> {
    // Every token ends at an ASCII byte or the end, so its span slices the `str`.
    let text = &sql[token.start..token.end()];
    let mut name = match (token.kind, text.strip_prefix('"').and_then(|t| t.strip_suffix('"'))) {
        (TokenKind::QuotedIdent, Some(quoted)) if !quoted.is_empty() => quoted.replace("\"\"", "\""),
        (TokenKind::Word, _) => text.to_ascii_lowercase(),
        _ => return None, // "", U&"...", a number, an operator
    };
    let mut n = name.len().min(63);
    while !name.is_char_boundary(n) {
        n -= 1;
    }
    name.truncate(n);
    Some(name)
}

/// The client's SQL-level statements: name -> (hash, PREPARE text).
#[derive(Debug, Default)]
pub struct ClientSqlStatements {
    by_name: HashMap<String, (u64, String)>,
}

impl ClientSqlStatements {
    /// The client's PREPARE failed: PostgreSQL did not create the name.
    pub fn forget(&mut self, name: &str) {
        self.by_name.remove(name);
    }

    /// DISCARD ALL.
    pub fn clear(&mut self) {
        self.by_name.clear();
    }
}

/// One query to run on a connection before the client's unit: a DEALLOCATE of a namesake or
/// an evicted name (`name` empty), or one of the client's PREPAREs, each its own query string
/// (`pg_prepared_statements` shows a PREPARE's whole string).
#[derive(Debug, PartialEq, Eq)]
pub struct Replay {
    pub name: String,
    pub hash: u64,
    pub sql: String,
}

/// The client's statements this connection lacks, recorded as held: run each `sql` as its own
/// query, and call `replay_failed` for the ones that fail. Executing them (also from inside
/// PL/pgSQL, `CREATE TABLE AS EXECUTE`, `EXPLAIN EXECUTE`) then finds them, and
/// `pg_prepared_statements` lists them.
pub fn replays(client: &ClientSqlStatements, server: &mut ServerSqlStatements) -> Vec<Replay> {
    if client.by_name.is_empty() {
        return Vec::new();
    }
    let mut replays = Vec::new();
    for (name, (hash, prepare)) in &client.by_name {
        let held = server.get(name);
        if held == Some(Some(*hash)) {
            continue;
        }
        let deallocate =
            |name: &str| Replay { name: String::new(), hash: 0, sql: format!("DEALLOCATE {}", quote_ident(name)) };
        replays.extend(held.map(|_| deallocate(name)));
        replays.extend(server.insert(name, *hash).map(|victim| deallocate(&victim)));
        replays.push(Replay { name: name.clone(), hash: *hash, sql: prepare.clone() });
    }
    replays
}

/// DEALLOCATE for the SQL-level statements other clients left on this connection, dropped from
/// the map: before a unit that reads `pg_prepared_statements`, which must not show another
/// client's SQL. None when there are none.
pub fn drop_foreign(client: &ClientSqlStatements, server: &mut ServerSqlStatements) -> Option<String> {
    let foreign = server.remove_unless(|name, hash| client.by_name.get(name).map(|(h, _)| Some(*h)) == Some(hash));
    let sql: Vec<String> = foreign.iter().map(|n| format!("DEALLOCATE {}", quote_ident(n))).collect();
    (!sql.is_empty()).then(|| sql.join("; "))
}

/// Whether `replays` may find something to do (cheap: no lookups when the client has none).
pub fn may_lack(client: &ClientSqlStatements, server: &ServerSqlStatements) -> bool {
    !client.by_name.is_empty() && client.by_name.iter().any(|(n, (h, _))| server.holds(n) != Some(Some(*h)))
}

/// A replayed PREPARE failed (a table it reads may not exist yet): the connection does not hold
/// it; an EXECUTE prepares it again then, and gets that attempt's error if it fails.
pub fn replay_failed(server: &mut ServerSqlStatements, replay: &Replay) {
    if !replay.name.is_empty() {
        server.forget(&replay.name);
    }
}

/// What the session does with one simple query.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// Forward the client's query unchanged, after running `inject` (if Some) as a separate, swallowed simple
    /// query on the same server connection. If `inject` fails: `server.prepare_failed(name, code)` (and
    /// `client.forget(name)` for a Prepare), and answer the client with its error instead of forwarding.
    /// Each step is its own query: `pg_prepared_statements` shows a PREPARE's whole query string.
    Forward { inject: Option<Vec<String>> },
    /// Do not send anything: answer the client with CommandComplete(tag) + ReadyForQuery, as PostgreSQL would.
    Answer { tag: &'static str },
    /// Answer with an error like PostgreSQL's (a duplicate name, or one that does not exist) +
    /// ReadyForQuery: the SQLSTATE and text of a ProxyError.
    Error { code: String, message: String },
}

fn error(e: ProxyError) -> Plan {
    Plan::Error { code: e.sqlstate().to_string(), message: e.to_string() }
}

/// Decides how to run `query` for this client on this server connection, and records its effect.
/// Call it outside failed transactions only: there PostgreSQL rejects all of these with 25P02, so forward.
/// If the forwarded PREPARE fails: `client.forget(name)` and `server.prepare_failed(name, code)`.
pub fn plan(query: &SqlPrepare, client: &mut ClientSqlStatements, server: &mut ServerSqlStatements) -> Plan {
    let deallocate = |name: &str| format!("DEALLOCATE {}", quote_ident(name));
    let forward = |steps: Vec<String>| Plan::Forward { inject: (!steps.is_empty()).then_some(steps) };
    match query {
        SqlPrepare::Prepare { name, sql } => {
            if client.by_name.contains_key(name) {
                return error(ProxyError::DuplicateStatement(name.clone()));
            }
            let mut h = std::collections::hash_map::DefaultHasher::new();
            sql.hash(&mut h);
            client.by_name.insert(name.clone(), (h.finish(), sql.to_string()));
            // The server's PREPARE fails if it holds the name, even for the same text.
            let mut steps: Vec<String> = server.get(name).map(|_| deallocate(name)).into_iter().collect();
            steps.extend(server.insert(name, h.finish()).map(|victim| deallocate(&victim)));
            forward(steps)
        }
        SqlPrepare::Execute { name } => {
            let held = server.get(name);
            let Some((hash, sql)) = client.by_name.get(name) else {
                // PostgreSQL reports the error itself, unless the name is another client's statement here.
                return if held.is_some() {
                    error(ProxyError::UnknownStatement(name.clone()))
                } else {
                    forward(vec![])
                };
            };
            if held == Some(Some(*hash)) {
                return forward(vec![]);
            }
            let mut steps: Vec<String> = held.map(|_| deallocate(name)).into_iter().collect();
            steps.extend(server.insert(name, *hash).map(|victim| deallocate(&victim)));
            steps.push(sql.clone());
            forward(steps)
        }
        SqlPrepare::Deallocate { name } => {
            let Some((hash, _)) = client.by_name.remove(name) else {
                return error(ProxyError::UnknownStatement(name.clone()));
            };
            if server.get(name) != Some(Some(hash)) {
                return Plan::Answer { tag: "DEALLOCATE" }; // not on this connection: nothing to drop
            }
            server.forget(name);
            forward(vec![])
        }
        SqlPrepare::DeallocateAll => {
            client.clear();
            server.clear();
            forward(vec![])
        }
        SqlPrepare::Other => forward(vec![]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SqlPrepare::*;

    fn prepare<'a>(name: &str, sql: &'a str) -> SqlPrepare<'a> {
        Prepare { name: name.to_string(), sql }
    }

    fn execute(name: &str) -> SqlPrepare<'static> {
        Execute { name: name.to_string() }
    }

    fn deallocate(name: &str) -> SqlPrepare<'static> {
        Deallocate { name: name.to_string() }
    }

    fn forward(inject: Option<&str>) -> Plan {
        Plan::Forward { inject: inject.map(|steps| steps.split("; ").map(str::to_string).collect()) }
    }

    fn error(code: &'static str, message: &str) -> Plan {
        Plan::Error { code: code.to_string(), message: message.to_string() }
    }

    #[test]
    fn inspect_spellings() {
        let tricky = "Prepare \"a\"\"b\"(text) as select 'x;y', $$;$$, $q$;$q$, E'\\';', x$$ from t";
        let long = format!("PREPARE {} AS SELECT 1", "Ab".repeat(40));
        let cases = [
            ("PREPARE p AS SELECT 1", prepare("p", "PREPARE p AS SELECT 1")),
            (
                "-- c\n /* a /* b */ */ prepare P(int) AS SELECT $1 ; -- end",
                prepare("p", "-- c\n /* a /* b */ */ prepare P(int) AS SELECT $1 ; -- end"),
            ),
            ("PREPARE \"My Stmt\" AS SELECT 1;;", prepare("My Stmt", "PREPARE \"My Stmt\" AS SELECT 1;;")),
            (tricky, prepare("a\"b", tricky)),
            ("PREPARE transaction AS SELECT 1", prepare("transaction", "PREPARE transaction AS SELECT 1")),
            (&long, prepare(&"ab".repeat(40)[..63], &long)),
            ("EXECUTE p(1,2)", execute("p")),
            ("execute P (1, 'a;b') -- x", execute("p")),
            ("/**/EXECUTE \"P\"", execute("P")),
            ("EXPLAIN ANALYZE EXECUTE p(1)", execute("p")),
            ("explain analyse verbose execute p", execute("p")),
            ("EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE q", execute("q")),
            ("DEALLOCATE PREPARE p", deallocate("p")),
            ("deallocate p;", deallocate("p")),
            ("DEALLOCATE prepare", deallocate("prepare")),
            ("DEALLOCATE \"all\"", deallocate("all")),
            ("deallocate all", DeallocateAll),
            ("DEALLOCATE PREPARE ALL ;", DeallocateAll),
            // Not handled: other statements, multi-statement strings, odd or invalid spellings.
            ("PREPARE TRANSACTION 'gid'", Other),
            ("PREPARE p AS SELECT 1; EXECUTE p", Other),
            ("EXECUTE p; SELECT 1", Other),
            ("DEALLOCATE p; /* x */ DEALLOCATE q", Other),
            ("CREATE TABLE t AS EXECUTE p", Other),
            ("EXPLAIN SELECT 1", Other),
            ("EXECUTE U&\"d\\0061t\"", Other),
            ("EXECUTE \"\"", Other),
            ("executed", Other),
            ("SELECT 'PREPARE p AS SELECT 1'", Other),
            ("", Other),
        ];
        for (sql, expected) in cases {
            assert_eq!(inspect(sql), expected, "{sql}");
        }
    }

    #[test]
    fn clients_sharing_a_connection_keep_their_own_statements() {
        let (mut a, mut b, mut c, mut shared, mut fresh) = Default::default();
        let (pa, pb) = (prepare("p", "PREPARE p AS SELECT 1"), prepare("p", "PREPARE p AS SELECT 2"));
        assert_eq!(plan(&pa, &mut a, &mut shared), forward(None));
        // B's PREPARE would fail with 42P05 on the server: A's p goes first.
        assert_eq!(plan(&pb, &mut b, &mut shared), forward(Some("DEALLOCATE \"p\"")));
        assert_eq!(plan(&execute("p"), &mut a, &mut shared), forward(Some("DEALLOCATE \"p\"; PREPARE p AS SELECT 1")));
        assert_eq!(plan(&execute("p"), &mut a, &mut shared), forward(None));
        // A's next transaction lands on another connection.
        assert_eq!(plan(&execute("p"), &mut a, &mut fresh), forward(Some("PREPARE p AS SELECT 1")));
        // C never prepared p: it must not run A's; a connection without p reports the error itself.
        assert_eq!(plan(&execute("p"), &mut c, &mut shared), error("26000", "prepared statement \"p\" does not exist"));
        assert_eq!(plan(&execute("p"), &mut c, &mut ServerSqlStatements::default()), forward(None));
    }

    #[test]
    fn duplicates_unknown_names_and_deallocate() {
        let (mut client, mut server, mut other) = Default::default();
        assert_eq!(plan(&prepare("a\"b", "PREPARE \"a\"\"b\" AS SELECT 1"), &mut client, &mut server), forward(None));
        let again = plan(&prepare("a\"b", "PREPARE \"a\"\"b\" AS SELECT 2"), &mut client, &mut server);
        assert_eq!(again, error("42P05", "prepared statement \"a\"b\" already exists"));
        // The first text stays the client's statement.
        assert_eq!(plan(&execute("a\"b"), &mut client, &mut other), forward(Some("PREPARE \"a\"\"b\" AS SELECT 1")));
        let unknown = plan(&deallocate("nope"), &mut client, &mut server);
        assert_eq!(unknown, error("26000", "prepared statement \"nope\" does not exist"));
        // Dropped on the connection that holds it; answered locally elsewhere.
        assert_eq!(plan(&deallocate("a\"b"), &mut client, &mut server), forward(None));
        assert!(server.is_empty() && client.by_name.is_empty() && other.len() == 1);
        plan(&prepare("q", "PREPARE q AS SELECT 1"), &mut client, &mut server);
        assert_eq!(plan(&deallocate("q"), &mut client, &mut other), Plan::Answer { tag: "DEALLOCATE" });
        assert_eq!(plan(&execute("q"), &mut client, &mut ServerSqlStatements::default()), forward(None));
    }

    #[test]
    fn deallocate_all_and_failures() {
        let (mut client, mut server) = Default::default();
        plan(&prepare("p", "PREPARE p AS SELECT 1"), &mut client, &mut server);
        assert_eq!(plan(&DeallocateAll, &mut client, &mut server), forward(None));
        assert!(client.by_name.is_empty() && server.is_empty());
        assert_eq!(plan(&Other, &mut client, &mut server), forward(None));
        // A PREPARE that fails leaves nothing behind, unless the server held an untracked p (42P05).
        for (code, inject) in [("42601", None), ("42P05", Some("DEALLOCATE \"p\""))] {
            plan(&prepare("p", "PREPARE p AS SELECT 1"), &mut client, &mut server);
            client.forget("p");
            server.prepare_failed("p", code);
            assert_eq!(plan(&prepare("p", "PREPARE p AS SELECT 1"), &mut client, &mut server), forward(inject));
            plan(&DeallocateAll, &mut client, &mut server);
        }
    }

    #[test]
    fn replays_bring_the_clients_statements_and_failures_answer_execute() {
        let (mut a, mut b, mut shared) = Default::default();
        plan(&prepare("p", "PREPARE p AS SELECT 1"), &mut a, &mut shared);
        plan(&prepare("q", "PREPARE q AS SELECT 2"), &mut b, &mut ServerSqlStatements::default());
        let mut fresh = ServerSqlStatements::default();
        let r = replays(&a, &mut fresh);
        assert_eq!(r, vec![Replay { name: "p".into(), hash: r[0].hash, sql: "PREPARE p AS SELECT 1".into() }]);
        assert!(replays(&a, &mut fresh).is_empty(), "held after one replay");
        // B on A's connection: A's p stays (other name), B's q is created.
        let r = replays(&b, &mut shared);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].sql, "PREPARE q AS SELECT 2");
        replay_failed(&mut shared, &r[0]);
        // The EXECUTE prepares it again (its table may exist by then), and so does the next replay.
        assert_eq!(plan(&execute("q"), &mut b, &mut shared), forward(Some("PREPARE q AS SELECT 2")));
        replay_failed(&mut shared, &r[0]);
        assert_eq!(replays(&b, &mut shared).len(), 1);
    }

    #[test]
    fn foreign_statements_are_dropped_before_the_view_is_read() {
        let (mut a, mut b, mut shared) = Default::default();
        plan(&prepare("p", "PREPARE p AS SELECT 1"), &mut a, &mut shared);
        plan(&prepare("q", "PREPARE q AS SELECT 2"), &mut b, &mut shared);
        assert_eq!(drop_foreign(&a, &mut shared).as_deref(), Some("DEALLOCATE \"q\""));
        assert_eq!(drop_foreign(&a, &mut shared), None);
        assert!(replays(&a, &mut shared).is_empty(), "A's own statement stays");
    }

    #[test]
    fn full_server_maps_drop_the_least_recently_used_name() {
        let (mut client, mut server) = Default::default();
        let texts: Vec<String> = (0..=crate::backend::sql_statements::SERVER_SQL_CAPACITY)
            .map(|i| format!("PREPARE s{i} AS SELECT {i}"))
            .collect();
        for (i, sql) in texts.iter().enumerate() {
            let inject = (i == crate::backend::sql_statements::SERVER_SQL_CAPACITY).then_some("DEALLOCATE \"s1\"");
            assert_eq!(plan(&prepare(&format!("s{i}"), sql), &mut client, &mut server), forward(inject));
            if i + 1 == crate::backend::sql_statements::SERVER_SQL_CAPACITY {
                plan(&execute("s0"), &mut client, &mut server); // s0 used recently, s1 becomes the oldest
            }
        }
        assert_eq!(server.len(), crate::backend::sql_statements::SERVER_SQL_CAPACITY);
        let reprepare = plan(&execute("s1"), &mut client, &mut server);
        assert_eq!(reprepare, forward(Some("DEALLOCATE \"s2\"; PREPARE s1 AS SELECT 1")));
    }
}
