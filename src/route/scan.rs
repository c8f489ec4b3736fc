//! Token-level facts for the classifier: statement splitting, function calls, locking clauses, leading keywords.
//!
//! These are found on tokens rather than on the AST on purpose: sqlparser's
//! `Visit` needs its `visitor` feature (not enabled in pgcausal), a hand
//! walker over every `Expr` variant would be long and would silently miss new
//! variants (a miss sends a write to a follower), and the token view also works
//! for statements sqlparser cannot parse. It errs only towards the leader: a
//! table alias spelled like a volatile function would be counted as a call.

use crate::route::lexer::{Lexer, Token, TokenKind};
use crate::route::{FunctionCatalog, Hint};

/// Splits a query string into statements at top-level `;`, the way psql does:
/// not inside parentheses nor inside a `BEGIN ATOMIC ... END` function body.
/// Each statement is trimmed to its first..last token; empty ones are dropped.
pub(crate) fn split_statements(sql: &str) -> (Option<Hint>, Vec<&str>) {
    let mut lexer = Lexer::new(sql);
    let mut statements = Vec::new();
    let mut start: Option<usize> = None;
    let mut end = 0;
    let mut parens = 0usize;
    let mut atomic = 0usize;
    let mut prev: Option<Token> = None;
    while let Some(token) = lexer.next_token() {
        match token.kind {
            TokenKind::Semicolon if parens == 0 && atomic == 0 => {
                if let Some(s) = start.take() {
                    statements.push(&sql[s..end]);
                }
                prev = None;
                continue;
            }
            TokenKind::Punct if token.text == b"(" => parens += 1,
            TokenKind::Punct if token.text == b")" => parens = parens.saturating_sub(1),
            TokenKind::Word if token.is_word("atomic") && prev.is_some_and(|p| p.is_word("begin")) => atomic += 1,
            TokenKind::Word if atomic > 0 && token.is_word("case") => atomic += 1,
            TokenKind::Word if atomic > 0 && token.is_word("end") => atomic -= 1,
            _ => {}
        }
        start.get_or_insert(token.start);
        end = token.end();
        prev = Some(token);
    }
    if let Some(s) = start {
        statements.push(&sql[s..end]);
    }
    (lexer.hint(), statements)
}

/// What the tokens of one statement say, independent of whether it parses.
#[derive(Debug, Default)]
pub(crate) struct Facts<'a> {
    /// The first three tokens, for keyword checks.
    pub lead: [Option<Token<'a>>; 3],
    /// Calls a function the catalog sends to the leader.
    pub volatile_call: bool,
    /// Calls a session-level advisory lock function.
    pub advisory_lock: bool,
    pub advisory_unlock_all: bool,
    pub set_config_calls: usize,
    /// `FOR UPDATE`, `FOR NO KEY UPDATE`, `FOR SHARE` or `FOR KEY SHARE`.
    pub locking_clause: bool,
    /// Mentions INSERT, UPDATE, DELETE, MERGE, INTO or COPY anywhere.
    pub write_words: bool,
    /// The last `READ ONLY` (true) or `READ WRITE` (false) seen.
    pub read_only_mode: Option<bool>,
    /// Calls `currval` or `lastval`: state of this backend's earlier `nextval`.
    pub sequence_state: bool,
    /// Names state that lives in one node or backend: statistics views, locks, prepared
    /// statements, a sequence relation's own columns (a follower shows them pre-logged).
    pub node_local: bool,
}

/// Views and columns whose answer depends on the node or backend (see `Facts::node_local`).
const NODE_LOCAL_NAMES: &[&str] = &[
    "pg_locks",
    "pg_prepared_statements",
    "pg_prepared_xacts",
    "pg_cursors",
    "pg_backend_memory_contexts",
    "pg_replication_slots",
    "last_value",
    "log_cnt",
    "is_called",
];

/// Prefixes of the statistics views (pg_stat_activity, pg_stat_wal_receiver, pg_statio_*, ...).
const NODE_LOCAL_PREFIXES: &[&str] = &["pg_stat_", "pg_statio_"];

const SESSION_ADVISORY_LOCKS: &[&str] =
    &["pg_advisory_lock", "pg_advisory_lock_shared", "pg_try_advisory_lock", "pg_try_advisory_lock_shared"];

impl<'a> Facts<'a> {
    pub fn scan(statement: &'a str, functions: &FunctionCatalog) -> Self {
        let mut facts = Facts::default();
        // prev[0] is the token just before the current one.
        let mut prev: [Option<Token>; 3] = [None; 3];
        for (i, token) in Lexer::new(statement).enumerate() {
            if i < facts.lead.len() {
                facts.lead[i] = Some(token);
            }
            let is = |n: usize, kw: &str| prev[n].is_some_and(|t| t.is_word(kw));
            if token.is_punct(b'(') {
                facts.function_call(&prev, functions);
            } else if token.kind == TokenKind::Word {
                facts.locking_clause |= ends_locking_clause(&token, &prev);
                if ["insert", "update", "delete", "merge", "into", "copy"].iter().any(|w| token.is_word(w)) {
                    facts.write_words = true;
                }
                facts.node_local |= NODE_LOCAL_NAMES.iter().any(|w| token.is_word(w))
                    || NODE_LOCAL_PREFIXES.iter().any(|p| token.starts_with_word(p));
                if is(0, "read") && token.is_word("only") {
                    facts.read_only_mode = Some(true);
                } else if is(0, "read") && token.is_word("write") {
                    facts.read_only_mode = Some(false);
                }
            }
            prev = [Some(token), prev[0], prev[1]];
        }
        facts
    }

    /// True when lead token `i` is the unquoted word `kw` (lowercase).
    pub fn lead_is(&self, i: usize, kw: &str) -> bool {
        self.lead[i].is_some_and(|t| t.is_word(kw))
    }

    /// `name(` or `schema.name(`: look the name up without allocating.
    fn function_call(&mut self, prev: &[Option<Token>; 3], functions: &FunctionCatalog) {
        let is_name = |t: &Option<Token>| t.is_some_and(|t| matches!(t.kind, TokenKind::Word | TokenKind::QuotedIdent));
        if !is_name(&prev[0]) {
            return;
        }
        let mut buf = NameBuf::new();
        let schema_token = if prev[1].is_some_and(|t| t.is_punct(b'.')) && is_name(&prev[2]) { prev[2] } else { None };
        if let Some(schema) = schema_token {
            buf.push_ident(schema);
            buf.push_dot();
        }
        let name_start = buf.len;
        buf.push_ident(prev[0].expect("checked above"));
        let (Ok(qualified), Ok(name)) =
            (std::str::from_utf8(&buf.bytes[..buf.len]), std::str::from_utf8(&buf.bytes[name_start..buf.len]))
        else {
            return;
        };
        let schema = schema_token.map(|_| &qualified[..name_start - 1]);
        if functions.needs_leader(schema, name, qualified) {
            self.volatile_call = true;
        }
        // Built-ins with session effects are recognized by name in pg_catalog or unqualified.
        if schema.is_none_or(|s| s == "pg_catalog") {
            if SESSION_ADVISORY_LOCKS.contains(&name) {
                self.advisory_lock = true;
            } else if name == "pg_advisory_unlock_all" {
                self.advisory_unlock_all = true;
            } else if name == "set_config" {
                self.set_config_calls += 1;
            } else if name == "currval" || name == "lastval" {
                self.sequence_state = true;
            }
        }
    }
}

/// `FOR UPDATE`, `FOR NO KEY UPDATE`, `FOR SHARE` or `FOR KEY SHARE` ending at `token`.
fn ends_locking_clause(token: &Token, prev: &[Option<Token>; 3]) -> bool {
    let is = |n: usize, kw: &str| prev[n].is_some_and(|t| t.is_word(kw));
    (token.is_word("update") && (is(0, "for") || (is(0, "key") && is(1, "no") && is(2, "for"))))
        || (token.is_word("share") && (is(0, "for") || (is(0, "key") && is(1, "for"))))
}

/// A lowercased `[schema.]name` on the stack. Identifiers are clipped to 63
/// bytes at a character boundary, as the server does (NAMEDATALEN - 1).
struct NameBuf {
    bytes: [u8; 2 * 63 + 1],
    len: usize,
}

impl NameBuf {
    const MAX_IDENT: usize = 63;

    fn new() -> Self {
        NameBuf { bytes: [0; 2 * 63 + 1], len: 0 }
    }

    fn push_dot(&mut self) {
        self.bytes[self.len] = b'.';
        self.len += 1;
    }

    fn push_ident(&mut self, token: Token) {
        let text = token.text;
        let (body, quoted) = match token.kind {
            TokenKind::QuotedIdent if text.first() == Some(&b'"') && text.len() >= 2 => {
                (&text[1..text.len() - 1], true)
            }
            _ => (text, false),
        };
        let start = self.len;
        let mut i = 0;
        while i < body.len() && self.len - start < Self::MAX_IDENT {
            let b = body[i];
            self.bytes[self.len] = b.to_ascii_lowercase();
            self.len += 1;
            // A doubled quote inside a quoted identifier stands for one quote.
            i += if quoted && b == b'"' { 2 } else { 1 };
        }
        // Back off to a UTF-8 character boundary if we clipped mid-character.
        let is_continuation = |b: u8| (b & 0xC0) == 0x80;
        if i < body.len() && is_continuation(body[i]) {
            while self.len > start && is_continuation(self.bytes[self.len - 1]) {
                self.len -= 1;
            }
            self.len = self.len.saturating_sub(1).max(start); // the character's lead byte
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_psql() {
        let (_, s) = split_statements("SELECT 1; ; INSERT INTO t VALUES (';') ; -- x\n");
        assert_eq!(s, ["SELECT 1", "INSERT INTO t VALUES (';')"]);
        let body =
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT CASE WHEN true THEN 1 END; SELECT 2; END";
        let sql = format!("{body}; SELECT 3");
        let (_, s) = split_statements(&sql);
        assert_eq!(s, [body, "SELECT 3"]);
        let (hint, s) = split_statements("/* pgcausal:leader */ SELECT 1");
        assert_eq!((hint, s), (Some(Hint::Leader), vec!["SELECT 1"]));
    }

    #[test]
    fn finds_calls_and_locks() {
        let catalog = FunctionCatalog::builtin();
        let f = Facts::scan("SELECT pg_catalog.NEXTVAL('s'), \"set_config\"('a','b',false)", &catalog);
        assert!(f.volatile_call);
        assert_eq!(f.set_config_calls, 1);
        let f = Facts::scan("SELECT 'nextval(' FROM t FOR NO KEY UPDATE", &catalog);
        assert!(!f.volatile_call);
        assert!(f.locking_clause);
        let f = Facts::scan("SELECT pg_try_advisory_lock(1), pg_advisory_unlock_all()", &catalog);
        assert!(f.advisory_lock && f.advisory_unlock_all);
        let f = Facts::scan("SELECT pg_advisory_xact_lock(1)", &catalog);
        assert!(f.volatile_call && !f.advisory_lock);
        let long = format!("SELECT {}x()", "a".repeat(100));
        assert!(!Facts::scan(&long, &catalog).volatile_call);
    }
}
