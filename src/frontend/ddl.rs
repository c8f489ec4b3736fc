//! DDL seen through the proxy: a schema generation that keeps statements prepared before a DDL
//! from being shared after it, and which relations it touched, so a statement over one of them
//! fails like PostgreSQL's plan cache (0A000) instead of changing its row shape under the client.

use crate::lexical::{has, IDENT_CHAR};
use crate::route::{Lexer, Token, TokenKind};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// How many recent DDL targets are remembered (older ones count as touching everything).
const REMEMBERED: usize = 256;

#[derive(Default)]
pub struct DdlLog {
    generation: AtomicU64,
    /// (generation after the DDL, lowercase unqualified relation or type name)
    touched: Mutex<VecDeque<(u64, String)>>,
}

impl DdlLog {
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Records DDL about to run; `sql` starts with CREATE, ALTER or DROP.
    pub fn record(&self, sql: &str) {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let mut touched = self.touched.lock().expect("ddl log poisoned");
        let names = targets(sql);
        if names.is_empty() {
            touched.push_back((generation, "\0".into())); // keeps the generation's place; matches nothing
        }
        for name in names {
            touched.push_back((generation, name));
        }
        while touched.len() > REMEMBERED {
            touched.pop_front();
        }
    }

    /// True if DDL since `since` touched a relation the SQL text names (or if too much DDL has
    /// happened since to tell).
    pub fn touches(&self, since: u64, sql: &[u8]) -> bool {
        let touched = self.touched.lock().expect("ddl log poisoned");
        if touched.front().is_none_or(|(g, _)| *g > since + 1) && self.generation() > since {
            return true; // the entries from right after `since` were forgotten
        }
        let text = String::from_utf8_lossy(sql).to_ascii_lowercase();
        touched.iter().filter(|(g, _)| *g > since).any(|(_, name)| mentions(&text, name))
    }
}

/// The object names a DDL statement acts on (best effort, by keywords).
fn targets(sql: &str) -> Vec<String> {
    const SKIP: &[&str] = &[
        "create",
        "alter",
        "drop",
        "or",
        "replace",
        "temp",
        "temporary",
        "unlogged",
        "materialized",
        "table",
        "view",
        "type",
        "index",
        "if",
        "not",
        "exists",
        "only",
        "concurrently",
        "unique",
        "sequence",
        "foreign",
        "domain",
    ];
    let mut tokens = Lexer::new(sql).skip_while(|t| SKIP.iter().any(|kw| t.is_word(kw))).peekable();
    let mut names = Vec::new();
    // Names separated by `,`, each possibly qualified: the last part of each.
    while let Some(first) = tokens.next_if(is_name) {
        let mut last = first;
        while tokens.next_if(|t| t.is_punct(b'.')).is_some() {
            match tokens.next_if(is_name) {
                Some(part) => last = part,
                None => break,
            }
        }
        let name = String::from_utf8_lossy(last.text).to_ascii_lowercase();
        let name = name.trim_matches('"');
        if !name.is_empty() {
            names.push(name.to_string());
        }
        if tokens.next_if(|t| t.is_punct(b',')).is_none() {
            break;
        }
    }
    names
}

fn is_name(token: &Token) -> bool {
    matches!(token.kind, TokenKind::Word | TokenKind::QuotedIdent)
}

/// True if `name` appears in `text` as a whole word.
fn mentions(text: &str, name: &str) -> bool {
    let word = |b: Option<&u8>| b.is_some_and(|&b| has(b, IDENT_CHAR));
    let bytes = text.as_bytes();
    text.match_indices(name)
        .any(|(at, _)| !word(at.checked_sub(1).and_then(|i| bytes.get(i))) && !word(bytes.get(at + name.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddl_targets_and_mentions() {
        assert_eq!(targets("ALTER TABLE evolving ADD COLUMN c int"), vec!["evolving"]);
        assert_eq!(targets("DROP TABLE IF EXISTS a, public.b CASCADE"), vec!["a", "b"]);
        assert_eq!(targets("CREATE OR REPLACE VIEW \"V\" AS SELECT 1"), vec!["v"]);
        assert_eq!(targets("drop type mood cascade"), vec!["mood"]);
        let log = DdlLog::default();
        log.record("ALTER TABLE evolving ADD COLUMN c int");
        assert!(log.touches(0, b"SELECT * FROM Evolving WHERE id = $1"));
        assert!(!log.touches(0, b"SELECT * FROM evolving_history"));
        assert!(!log.touches(1, b"SELECT * FROM evolving"));
    }
}
