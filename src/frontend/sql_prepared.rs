//! SQL-level PREPARE/EXECUTE/DEALLOCATE under transaction pooling: the proxy keeps each client's
//! PREPARE texts and tracks which names every server connection holds, so it can re-prepare a
//! statement on whichever connection runs an EXECUTE and drop another client's same-named one.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

/// Server connections keep at most this many SQL-level names (least recently used dropped first).
pub const SERVER_SQL_CAPACITY: usize = 1000;
/// PostgreSQL truncates identifiers to NAMEDATALEN - 1 bytes.
const MAX_IDENT: usize = 63;

/// What one simple-query string does with SQL-level prepared statements (only single-statement strings are handled; multi-statement strings return Other).
#[derive(Debug, PartialEq, Eq)]
pub enum SqlPrepare<'a> {
    /// `name` normalized like PostgreSQL; `sql` is the PREPARE statement, without comments or `;`, to replay.
    Prepare { name: String, sql: &'a str },
    /// EXECUTE name, or EXPLAIN [options] EXECUTE name.
    Execute { name: String },
    Deallocate { name: String },
    DeallocateAll,
    Other,
}

impl SqlPrepare<'_> {
    /// The statement name, for undoing bookkeeping when the server reports an error.
    pub fn name(&self) -> Option<&str> {
        match self {
            SqlPrepare::Prepare { name, .. } | SqlPrepare::Execute { name } | SqlPrepare::Deallocate { name } => Some(name),
            _ => None,
        }
    }
}

/// Classifies a simple-query string; only strings starting with PREPARE, EXECUTE, EXPLAIN or DEALLOCATE are scanned further.
pub fn inspect(sql: &str) -> SqlPrepare<'_> {
    let mut lx = Lexer { s: sql.as_bytes(), pos: 0, last: 0 };
    lx.blank(true);
    let start = lx.pos;
    let Some(first) = lx.word() else { return SqlPrepare::Other };
    let query = if first.eq_ignore_ascii_case("prepare") {
        let Some(name) = lx.name() else { return SqlPrepare::Other };
        lx.blank(false);
        // Also rules out PREPARE TRANSACTION 'gid' (a statement may be named "transaction").
        if lx.peek() != Some(b'(') && !lx.keyword("as") {
            return SqlPrepare::Other;
        }
        SqlPrepare::Prepare { name, sql: "" }
    } else if first.eq_ignore_ascii_case("execute") {
        let Some(name) = lx.name() else { return SqlPrepare::Other };
        SqlPrepare::Execute { name }
    } else if first.eq_ignore_ascii_case("explain") {
        lx.blank(false);
        if lx.peek() == Some(b'(') {
            lx.skip_parens();
        }
        while lx.keyword("analyze") || lx.keyword("analyse") || lx.keyword("verbose") {}
        let Some(name) = lx.keyword("execute").then(|| lx.name()).flatten() else { return SqlPrepare::Other };
        SqlPrepare::Execute { name }
    } else if first.eq_ignore_ascii_case("deallocate") {
        let at = lx.pos;
        // `DEALLOCATE prepare` alone drops a statement named "prepare".
        if !lx.keyword("prepare") || lx.at_statement_end() {
            lx.pos = at;
        }
        if lx.keyword("all") {
            SqlPrepare::DeallocateAll
        } else {
            let Some(name) = lx.name() else { return SqlPrepare::Other };
            SqlPrepare::Deallocate { name }
        }
    } else {
        return SqlPrepare::Other;
    };
    let Some(end) = lx.single_statement_end() else { return SqlPrepare::Other };
    match query {
        SqlPrepare::Prepare { name, .. } => SqlPrepare::Prepare { name, sql: &sql[start..end] },
        q => q,
    }
}

/// A byte scanner that knows PostgreSQL's comments, strings, quoted identifiers and dollar quotes.
struct Lexer<'a> {
    s: &'a [u8],
    pos: usize,
    /// End of the last token consumed, so trailing comments and `;` are not part of the statement.
    last: usize,
}

fn ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn ident_cont(b: u8) -> bool {
    ident_start(b) || b.is_ascii_digit() || b == b'$'
}

impl<'a> Lexer<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn at(&self, text: &[u8]) -> bool {
        self.s[self.pos..].starts_with(text)
    }

    /// Skips whitespace and comments (nested, as in PostgreSQL), and `;` if `semicolons`.
    fn blank(&mut self, semicolons: bool) {
        while let Some(b) = self.peek() {
            if matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c') || (semicolons && b == b';') {
                self.pos += 1;
            } else if self.at(b"--") {
                self.pos = self.s[self.pos..].iter().position(|&c| c == b'\n').map_or(self.s.len(), |i| self.pos + i);
            } else if self.at(b"/*") {
                let mut depth = 0;
                while self.pos < self.s.len() {
                    if self.at(b"/*") {
                        depth += 1;
                        self.pos += 2;
                    } else if self.at(b"*/") {
                        depth -= 1;
                        self.pos += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        self.pos += 1;
                    }
                }
            } else {
                return;
            }
        }
    }

    /// An unquoted word (identifier or keyword), as written.
    fn word(&mut self) -> Option<&'a str> {
        self.blank(false);
        let start = self.pos;
        if !self.peek().is_some_and(ident_start) {
            return None;
        }
        while self.peek().is_some_and(ident_cont) {
            self.pos += 1;
        }
        self.last = self.pos;
        // Boundaries fall on ASCII bytes or the end, so this is valid UTF-8.
        std::str::from_utf8(&self.s[start..self.pos]).ok()
    }

    /// Consumes the keyword `kw` if it comes next.
    fn keyword(&mut self, kw: &str) -> bool {
        let at = self.pos;
        let found = self.word().is_some_and(|w| w.eq_ignore_ascii_case(kw));
        if !found {
            self.pos = at;
        }
        found
    }

    /// A statement name, normalized: unquoted lowercased, quoted kept, both truncated to 63 bytes.
    fn name(&mut self) -> Option<String> {
        self.blank(false);
        let mut name = if self.peek() == Some(b'"') {
            let start = self.pos + 1;
            if !self.quoted(b'"', false) || self.pos - start < 2 {
                return None; // unterminated, or "" (a syntax error)
            }
            std::str::from_utf8(&self.s[start..self.pos - 1]).ok()?.replace("\"\"", "\"")
        } else {
            let word = self.word()?.to_ascii_lowercase();
            if word == "u" && self.peek() == Some(b'&') {
                return None; // U&"..." identifiers are rare; left untracked
            }
            word
        };
        if name.len() > MAX_IDENT {
            let mut n = MAX_IDENT;
            while !name.is_char_boundary(n) {
                n -= 1;
            }
            name.truncate(n);
        }
        Some(name)
    }

    /// Consumes a `quote`-delimited token starting at the opening quote (doubled quotes, and backslashes if `escapes`).
    /// Returns whether the closing quote was found.
    fn quoted(&mut self, quote: u8, escapes: bool) -> bool {
        self.pos += 1;
        while let Some(b) = self.peek() {
            self.pos += 1;
            if escapes && b == b'\\' {
                self.pos = (self.pos + 1).min(self.s.len());
            } else if b == quote {
                if self.peek() != Some(quote) {
                    self.last = self.pos;
                    return true;
                }
                self.pos += 1;
            }
        }
        self.last = self.pos;
        false
    }

    /// Consumes one token of any kind.
    fn token(&mut self) {
        let b = self.s[self.pos];
        if ident_cont(b) && b != b'$' {
            let start = self.pos;
            while self.peek().is_some_and(ident_cont) {
                self.pos += 1;
            }
            if self.pos - start == 1 && matches!(b, b'e' | b'E') && self.peek() == Some(b'\'') {
                self.quoted(b'\'', true); // E'...': backslash escapes
                return;
            }
        } else if b == b'\'' || b == b'"' {
            self.quoted(b, false);
            return;
        } else if b == b'$' && !self.s.get(self.pos + 1).is_some_and(u8::is_ascii_digit) {
            // $tag$ ... $tag$ (a tag cannot start with a digit: `$1` is a parameter).
            let tag_len = self.s[self.pos + 1..].iter().position(|&c| !ident_cont(c) || c == b'$');
            match tag_len.filter(|&n| self.s.get(self.pos + 1 + n) == Some(&b'$')) {
                Some(n) => {
                    let tag = &self.s[self.pos..self.pos + n + 2];
                    let body = self.pos + tag.len();
                    let close = self.s[body..].windows(tag.len()).position(|w| w == tag);
                    self.pos = close.map_or(self.s.len(), |i| body + i + tag.len());
                }
                _ => self.pos += 1,
            }
        } else {
            self.pos += 1; // `$1` lands here too: `$`, then the digits as a word
        }
        self.last = self.pos;
    }

    fn at_statement_end(&mut self) -> bool {
        self.blank(false);
        matches!(self.peek(), None | Some(b';'))
    }

    /// Skips a parenthesized group (EXPLAIN options), nested parentheses included.
    fn skip_parens(&mut self) {
        let mut depth = 0;
        while !self.at_statement_end() {
            match self.peek() {
                Some(b'(') => depth += 1,
                Some(b')') => depth -= 1,
                _ => {}
            }
            self.token();
            if depth == 0 {
                return;
            }
        }
    }

    /// Where the current statement's last token ends, or None if another statement follows it.
    fn single_statement_end(&mut self) -> Option<usize> {
        while !self.at_statement_end() {
            self.token();
        }
        self.blank(true);
        (self.pos == self.s.len()).then_some(self.last)
    }
}

/// The client's SQL-level statements: name -> PREPARE text.
#[derive(Debug, Default)]
pub struct ClientSqlStatements {
    by_name: HashMap<String, (u64, String)>,
}

impl ClientSqlStatements {
    /// The client's PREPARE failed on the server: the name was never created.
    pub fn forget(&mut self, name: &str) {
        self.by_name.remove(name);
    }

    /// DISCARD ALL.
    pub fn clear(&mut self) {
        self.by_name.clear();
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// What a server connection holds: name -> hash of the PREPARE text (None: a statement we did not track).
#[derive(Debug, Default)]
pub struct ServerSqlStatements {
    by_name: HashMap<String, (Option<u64>, u64)>,
    tick: u64,
}

impl ServerSqlStatements {
    /// A PREPARE for `name` (the client's or an injected one) failed, so the server does not hold it.
    pub fn forget(&mut self, name: &str) {
        self.by_name.remove(name);
    }

    /// A PREPARE for `name` failed with `sqlstate`; 42P05 means the server holds an untracked
    /// statement under that name (prepared in a multi-statement string), to drop before the next try.
    pub fn prepare_failed(&mut self, name: &str, sqlstate: &str) {
        if sqlstate == "42P05" {
            self.by_name.insert(name.to_string(), (None, self.tick));
        } else {
            self.forget(name);
        }
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Whether the server holds `name`, and which statement (marks it used).
    fn get(&mut self, name: &str) -> Option<Option<u64>> {
        self.tick += 1;
        let (hash, used) = self.by_name.get_mut(name)?;
        *used = self.tick;
        Some(*hash)
    }

    /// Records `name`; returns the least recently used name to DEALLOCATE if the map is full.
    fn insert(&mut self, name: &str, hash: u64) -> Option<String> {
        self.tick += 1;
        let evicted = if !self.by_name.contains_key(name) && self.by_name.len() >= SERVER_SQL_CAPACITY {
            let victim = self.by_name.iter().min_by_key(|(_, (_, used))| *used).map(|(n, _)| n.clone())?;
            self.by_name.remove(&victim);
            Some(victim)
        } else {
            None
        };
        self.by_name.insert(name.to_string(), (Some(hash), self.tick));
        evicted
    }
}

/// What the session does with one simple query.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// Forward the client's query unchanged, after running `inject` (if Some) as a separate, swallowed
    /// simple query on the same server connection. If `inject` fails: `server.prepare_failed(name, code)`
    /// (and `client.forget(name)` for a Prepare), and send its error to the client instead of the query.
    Forward { inject: Option<String> },
    /// Do not send anything: answer the client with CommandComplete(tag) + ReadyForQuery, as PostgreSQL would.
    Answer { tag: &'static str },
    /// Answer with an error like PostgreSQL's + ReadyForQuery.
    Error { code: &'static str, message: String },
}

/// The identifier in double quotes, as PostgreSQL reads it back exactly.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn deallocate(name: &str) -> String {
    format!("DEALLOCATE {}", quote_ident(name))
}

fn text_hash(sql: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    sql.hash(&mut h);
    h.finish()
}

fn error(code: &'static str, name: &str, what: &str) -> Plan {
    Plan::Error { code, message: format!("prepared statement \"{name}\" {what}") }
}

/// Decides how to run `query` for this client on this server connection, and records its effect.
/// Call it only outside failed transactions: there PostgreSQL rejects these with 25P02, changing nothing, so forward.
/// If the client's PREPARE fails: `client.forget(name)` and `server.prepare_failed(name, code)`.
pub fn plan(query: &SqlPrepare, client: &mut ClientSqlStatements, server: &mut ServerSqlStatements) -> Plan {
    let inject = |steps: Vec<String>| Plan::Forward { inject: (!steps.is_empty()).then(|| steps.join("; ")) };
    match query {
        SqlPrepare::Prepare { name, sql } => {
            if client.by_name.contains_key(name) {
                return error("42P05", name, "already exists");
            }
            let hash = text_hash(sql);
            client.by_name.insert(name.clone(), (hash, sql.to_string()));
            // PREPARE fails if the name exists on the server, even with the same text.
            let mut steps: Vec<String> = server.get(name).map(|_| deallocate(name)).into_iter().collect();
            steps.extend(server.insert(name, hash).map(|victim| deallocate(&victim)));
            inject(steps)
        }
        SqlPrepare::Execute { name } => {
            let Some((hash, sql)) = client.by_name.get(name) else {
                // PostgreSQL reports the error itself, unless it would run another client's statement.
                return match server.get(name) {
                    Some(_) => error("26000", name, "does not exist"),
                    None => Plan::Forward { inject: None },
                };
            };
            let held = server.get(name);
            if held == Some(Some(*hash)) {
                return Plan::Forward { inject: None };
            }
            let mut steps: Vec<String> = held.map(|_| deallocate(name)).into_iter().collect();
            steps.extend(server.insert(name, *hash).map(|victim| deallocate(&victim)));
            steps.push(sql.clone());
            inject(steps)
        }
        SqlPrepare::Deallocate { name } => {
            let Some((hash, _)) = client.by_name.remove(name) else {
                return error("26000", name, "does not exist");
            };
            if server.get(name) == Some(Some(hash)) {
                server.forget(name);
                Plan::Forward { inject: None }
            } else {
                Plan::Answer { tag: "DEALLOCATE" } // not on this connection: nothing to drop
            }
        }
        SqlPrepare::DeallocateAll => {
            client.clear();
            server_discarded(server);
            Plan::Forward { inject: None }
        }
        SqlPrepare::Other => Plan::Forward { inject: None },
    }
}

/// DISCARD ALL or DEALLOCATE ALL ran on the server: it holds no statements (other clients re-prepare on demand).
pub fn server_discarded(server: &mut ServerSqlStatements) {
    server.by_name.clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    use SqlPrepare::*;

    #[test]
    fn inspect_spellings() {
        let deallocate = |name: &str| Deallocate { name: name.to_string() };
        let long = format!("PREPARE {} AS SELECT 1", "Ab".repeat(40));
        let cases = [
            ("PREPARE p AS SELECT 1", prepare("p", "PREPARE p AS SELECT 1")),
            (" -- c\n/* a /* nested */ b */ prepare P(int) AS SELECT $1 ; -- end", prepare("p", "prepare P(int) AS SELECT $1")),
            ("PREPARE \"My Stmt\" AS SELECT 1;;", prepare("My Stmt", "PREPARE \"My Stmt\" AS SELECT 1")),
            ("Prepare \"a\"\"b\"(text) as select 'x;y', $$;$$, $q$;$q$, E'\\';', x$$ from t", prepare("a\"b", "Prepare \"a\"\"b\"(text) as select 'x;y', $$;$$, $q$;$q$, E'\\';', x$$ from t")),
            ("PREPARE transaction AS SELECT 1", prepare("transaction", "PREPARE transaction AS SELECT 1")),
            (&long, prepare(&"ab".repeat(40)[..63], &long)),
            ("EXECUTE p(1,2)", execute("p")),
            ("execute P (1, 'a;b') -- x", execute("p")),
            ("/**/EXECUTE \"P\"", execute("P")),
            ("EXPLAIN ANALYZE EXECUTE p(1)", execute("p")),
            ("explain analyse verbose execute p", execute("p")),
            ("EXPLAIN (ANALYZE, FORMAT JSON, SETTINGS (true)) EXECUTE q", execute("q")),
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

    fn prepare<'a>(name: &str, sql: &'a str) -> SqlPrepare<'a> {
        Prepare { name: name.to_string(), sql }
    }

    fn execute(name: &str) -> SqlPrepare<'static> {
        Execute { name: name.to_string() }
    }

    fn forward(inject: Option<&str>) -> Plan {
        Plan::Forward { inject: inject.map(str::to_string) }
    }

    #[test]
    fn clients_sharing_a_connection_keep_their_own_statements() {
        let (mut a, mut b, mut c) = Default::default();
        let (mut shared, mut fresh) = (ServerSqlStatements::default(), ServerSqlStatements::default());
        let (pa, pb) = (prepare("p", "PREPARE p AS SELECT 1"), prepare("p", "PREPARE p AS SELECT 2"));
        assert_eq!(plan(&pa, &mut a, &mut shared), forward(None));
        // B's PREPARE would fail with 42P05 on the server: A's p goes first.
        assert_eq!(plan(&pb, &mut b, &mut shared), forward(Some("DEALLOCATE \"p\"")));
        assert_eq!(plan(&execute("p"), &mut a, &mut shared), forward(Some("DEALLOCATE \"p\"; PREPARE p AS SELECT 1")));
        assert_eq!(plan(&execute("p"), &mut a, &mut shared), forward(None));
        // A's next transaction lands on another connection.
        assert_eq!(plan(&execute("p"), &mut a, &mut fresh), forward(Some("PREPARE p AS SELECT 1")));
        // C never prepared p: it must not run A's, but a connection without p reports the error itself.
        let c_error = plan(&execute("p"), &mut c, &mut shared);
        assert_eq!(c_error, Plan::Error { code: "26000", message: "prepared statement \"p\" does not exist".into() });
        assert_eq!(plan(&execute("p"), &mut c, &mut ServerSqlStatements::default()), forward(None));
    }

    #[test]
    fn duplicates_unknown_names_and_deallocate() {
        let (mut client, mut server, mut other) = Default::default();
        assert_eq!(plan(&prepare("a\"b", "PREPARE \"a\"\"b\" AS SELECT 1"), &mut client, &mut server), forward(None));
        let again = plan(&prepare("a\"b", "PREPARE \"a\"\"b\" AS SELECT 2"), &mut client, &mut server);
        assert_eq!(again, Plan::Error { code: "42P05", message: "prepared statement \"a\"b\" already exists".into() });
        // The first text stays the client's statement.
        assert_eq!(plan(&execute("a\"b"), &mut client, &mut other), forward(Some("PREPARE \"a\"\"b\" AS SELECT 1")));
        let unknown = plan(&Deallocate { name: "nope".into() }, &mut client, &mut server);
        assert_eq!(unknown, Plan::Error { code: "26000", message: "prepared statement \"nope\" does not exist".into() });
        // Dropped on the connection that holds it; answered locally elsewhere.
        assert_eq!(plan(&Deallocate { name: "a\"b".into() }, &mut client, &mut server), forward(None));
        assert!(server.is_empty() && client.is_empty() && other.len() == 1);
        plan(&prepare("q", "PREPARE q AS SELECT 1"), &mut client, &mut server);
        let tag = plan(&Deallocate { name: "q".into() }, &mut client, &mut other);
        assert_eq!(tag, Plan::Answer { tag: "DEALLOCATE" });
        assert_eq!(plan(&execute("q"), &mut client, &mut ServerSqlStatements::default()), forward(None));
    }

    #[test]
    fn deallocate_all_and_failures() {
        let (mut client, mut server) = Default::default();
        plan(&prepare("p", "PREPARE p AS SELECT 1"), &mut client, &mut server);
        assert_eq!(plan(&DeallocateAll, &mut client, &mut server), forward(None));
        assert!(client.is_empty() && server.is_empty());
        assert_eq!(plan(&Other, &mut client, &mut server), forward(None));
        // A PREPARE that fails leaves nothing behind...
        plan(&prepare("p", "PREPARE p AS SELEC 1"), &mut client, &mut server);
        client.forget("p");
        server.prepare_failed("p", "42601");
        assert!(client.is_empty() && server.is_empty());
        // ...unless the server already held an untracked p: drop it before the next try.
        plan(&prepare("p", "PREPARE p AS SELECT 1"), &mut client, &mut server);
        client.forget("p");
        server.prepare_failed("p", "42P05");
        assert_eq!(plan(&prepare("p", "PREPARE p AS SELECT 1"), &mut client, &mut server), forward(Some("DEALLOCATE \"p\"")));
    }

    #[test]
    fn full_server_maps_drop_the_least_recently_used_name() {
        let (mut client, mut server) = (ClientSqlStatements::default(), ServerSqlStatements::default());
        let texts: Vec<String> = (0..=SERVER_SQL_CAPACITY).map(|i| format!("PREPARE s{i} AS SELECT {i}")).collect();
        for (i, sql) in texts.iter().enumerate().take(SERVER_SQL_CAPACITY) {
            assert_eq!(plan(&prepare(&format!("s{i}"), sql), &mut client, &mut server), forward(None));
        }
        assert_eq!(plan(&execute("s0"), &mut client, &mut server), forward(None));
        let last = prepare(&format!("s{SERVER_SQL_CAPACITY}"), &texts[SERVER_SQL_CAPACITY]);
        assert_eq!(plan(&last, &mut client, &mut server), forward(Some("DEALLOCATE \"s1\"")));
        assert_eq!(server.len(), SERVER_SQL_CAPACITY);
        assert_eq!(plan(&execute("s1"), &mut client, &mut server), forward(Some("DEALLOCATE \"s2\"; PREPARE s1 AS SELECT 1")));
    }
}
