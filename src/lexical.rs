//! PostgreSQL's lexical rules: byte classes, where an operator ends, quoting; a leaf module (it imports nothing from the crate) because backend/ quotes setting names with it and must not import route/.
//!
//! The route's [`Lexer`](crate::route) and the fingerprint's single-pass scanner both read
//! their bytes through [`BYTE_CLASSES`] and end operators with [`operator_end`], so the two
//! cannot drift apart.

/// Whitespace: space, `\t`, `\n`, `\r`, `\v`, `\f`.
pub const WHITESPACE: u8 = 1;
/// Starts an unquoted identifier: letters, `_` and every non-ASCII byte.
pub const IDENT_START: u8 = 2;
/// Continues an unquoted identifier: letters, digits, `_`, `$`, non-ASCII.
pub const IDENT_CHAR: u8 = 4;
/// May be part of an operator: `+-*/<>=~!@#%^&|`?`.
pub const OPERATOR_CHAR: u8 = 8;
/// Continues a number: ASCII letters, digits and `_`.
pub const NUMBER_CHAR: u8 = 16;

/// A multi-character operator containing one of these may end in `+` or `-`.
const OPERATOR_SIGN_ENDS: &[u8] = b"~!@#%^&|`?";

const fn byte_classes() -> [u8; 256] {
    const fn mark(mut table: [u8; 256], chars: &[u8], class: u8) -> [u8; 256] {
        let mut i = 0;
        while i < chars.len() {
            table[chars[i] as usize] |= class;
            i += 1;
        }
        table
    }
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            table[b] |= IDENT_START | IDENT_CHAR;
        }
        if c.is_ascii_alphanumeric() || c == b'_' {
            table[b] |= NUMBER_CHAR;
        }
        b += 1;
    }
    table = mark(table, b"0123456789$", IDENT_CHAR);
    table = mark(table, b" \t\n\r\x0b\x0c", WHITESPACE);
    mark(table, b"+-*/<>=~!@#%^&|`?", OPERATOR_CHAR)
}

/// Each byte's classes, one table lookup so the hot loops test a single bit.
pub static BYTE_CLASSES: [u8; 256] = byte_classes();

/// Whether `b` is in `class` (also usable to build other `const` tables).
#[inline(always)]
pub const fn has(b: u8, class: u8) -> bool {
    BYTE_CLASSES[b as usize] & class != 0
}

/// An operator at `start`, by the server's rule: a multi-character operator may
/// not end in `+` or `-` unless it contains one of `~!@#%^&|`?` (so `=-1` is `=`, `-`, `1`),
/// and a `--` or `/*` inside it starts a comment.
pub fn operator_end(src: &[u8], start: usize) -> usize {
    let mut at = start;
    while let Some(&b) = src.get(at) {
        if !has(b, OPERATOR_CHAR) {
            break;
        }
        let next = src.get(at + 1).copied();
        if at > start && ((b == b'-' && next == Some(b'-')) || (b == b'/' && next == Some(b'*'))) {
            break;
        }
        at += 1;
    }
    let op = &src[start..at];
    if op.len() > 1 && !op.iter().any(|b| OPERATOR_SIGN_ENDS.contains(b)) {
        let mut len = op.len();
        while len > 1 && matches!(op[len - 1], b'+' | b'-') {
            len -= 1;
        }
        at = start + len;
    }
    at
}

/// True if `sql` starts with the word `word` (lowercase) in any case, after whitespace
/// (not after comments: a cheap test for SQL that may not be UTF-8).
pub fn starts_with_word(sql: &[u8], word: &[u8]) -> bool {
    let sql = &sql[sql.iter().position(|&b| !has(b, WHITESPACE)).unwrap_or(sql.len())..];
    sql.len() >= word.len()
        && sql[..word.len()].eq_ignore_ascii_case(word)
        && sql.get(word.len()).is_none_or(|&b| !has(b, IDENT_CHAR))
}

/// One identifier in double quotes (a `"` doubled), which PostgreSQL reads back exactly (no lowercasing).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A string literal in single quotes (a `'` doubled), for servers with standard_conforming_strings on.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A dotted name with each part quoted by [`quote_ident`]: a custom setting `myapp.x` stays two parts.
pub fn quote_qualified(name: &str) -> String {
    name.split('.').map(quote_ident).collect::<Vec<_>>().join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_ends() {
        assert_eq!(operator_end(b"=-1", 0), 1);
        assert_eq!(operator_end(b"->>'k'", 0), 3);
        assert_eq!(operator_end(b"<--x", 0), 1);
    }

    #[test]
    fn quoting_and_leading_words() {
        assert_eq!(quote_ident("my.x\""), "\"my.x\"\"\"");
        assert_eq!(quote_qualified("myapp.x"), "\"myapp\".\"x\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert!(starts_with_word(b"\x0b DROP TABLE t", b"drop"));
        assert!(!starts_with_word(b"drop$x", b"drop"));
    }
}
