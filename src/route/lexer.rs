//! Zero-allocation PostgreSQL tokenizer by [`lexical`](crate::lexical)'s rules, for the statement scanner, the side readers of PREPARE/EXECUTE names and DDL targets, and the fingerprint's test oracle.
//!
//! It follows the server's lexical rules closely enough to never mistake the
//! inside of a literal or comment for code (which is what routing safety needs),
//! and never fails: unterminated literals and comments run to the end of input.

use crate::lexical::{has, operator_end, IDENT_CHAR, IDENT_START, NUMBER_CHAR, OPERATOR_CHAR, WHITESPACE};
use crate::route::Hint;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TokenKind {
    /// Unquoted identifier or keyword.
    Word,
    /// `"..."` or `U&"..."`.
    QuotedIdent,
    /// `'...'`, `E'...'`, `U&'...'`, `B'...'`, `X'...'`, `N'...'` or `$tag$...$tag$`.
    String,
    Number,
    /// `$1`-style parameter.
    Param,
    /// One of `( ) , [ ] . :`.
    Punct,
    Operator,
    Semicolon,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Token<'a> {
    pub kind: TokenKind,
    /// The token's bytes in the source, quotes and prefixes included.
    pub text: &'a [u8],
    /// Byte offset of the token in the source.
    pub start: usize,
}

impl<'a> Token<'a> {
    pub fn end(&self) -> usize {
        self.start + self.text.len()
    }

    /// True for an unquoted word equal to `kw` (which must be lowercase).
    pub fn is_word(&self, kw: &str) -> bool {
        self.kind == TokenKind::Word && self.text.eq_ignore_ascii_case(kw.as_bytes())
    }

    /// True for an unquoted word starting with `prefix` (lowercase).
    pub fn starts_with_word(&self, prefix: &str) -> bool {
        self.kind == TokenKind::Word
            && self.text.len() >= prefix.len()
            && self.text[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
    }

    pub fn is_punct(&self, c: u8) -> bool {
        self.kind == TokenKind::Punct && self.text == [c]
    }
}

pub(crate) struct Lexer<'a> {
    src: &'a [u8],
    pos: usize,
    seen_token: bool,
    hint: Option<Hint>,
}

#[inline(always)]
fn is_ident_start(b: u8) -> bool {
    has(b, IDENT_START)
}

#[inline(always)]
fn is_ident_char(b: u8) -> bool {
    has(b, IDENT_CHAR)
}

/// Recognizes `pgcausal:leader` / `pgcausal:follower` as a comment body.
pub(crate) fn parse_hint(body: &[u8]) -> Option<Hint> {
    let body = body.trim_ascii();
    if body.eq_ignore_ascii_case(b"pgcausal:leader") {
        Some(Hint::Leader)
    } else if body.eq_ignore_ascii_case(b"pgcausal:follower") {
        Some(Hint::Follower)
    } else {
        None
    }
}

impl<'a> Lexer<'a> {
    pub fn new(sql: &'a str) -> Self {
        Lexer { src: sql.as_bytes(), pos: 0, seen_token: false, hint: None }
    }

    /// The hint comment seen before the first token (valid once a token was read).
    pub fn hint(&self) -> Option<Hint> {
        self.hint
    }

    fn peek(&self, ahead: usize) -> u8 {
        self.src.get(self.pos + ahead).copied().unwrap_or(0)
    }

    /// Skips whitespace and comments, noting a hint comment before the first token.
    fn skip_trivia(&mut self) {
        while let Some(&b) = self.src.get(self.pos) {
            match b {
                b if has(b, WHITESPACE) => self.pos += 1,
                b'-' if self.peek(1) == b'-' => {
                    self.pos = match self.src[self.pos..].iter().position(|&b| b == b'\n') {
                        Some(n) => self.pos + n + 1,
                        None => self.src.len(),
                    };
                }
                b'/' if self.peek(1) == b'*' => self.skip_block_comment(),
                _ => break,
            }
        }
    }

    /// Block comments nest in PostgreSQL, unlike C.
    fn skip_block_comment(&mut self) {
        let body_start = self.pos + 2;
        let mut depth = 0usize;
        let mut body_end = self.src.len();
        while self.pos < self.src.len() {
            if self.src[self.pos] == b'/' && self.peek(1) == b'*' {
                depth += 1;
                self.pos += 2;
            } else if self.src[self.pos] == b'*' && self.peek(1) == b'/' {
                depth -= 1;
                self.pos += 2;
                if depth == 0 {
                    body_end = self.pos - 2;
                    break;
                }
            } else {
                self.pos += 1;
            }
        }
        if !self.seen_token && self.hint.is_none() {
            self.hint = parse_hint(&self.src[body_start..body_end.max(body_start)]);
        }
    }

    /// Scans a quoted run starting at the opening quote. `backslash` enables E'' escapes.
    fn quoted(&mut self, quote: u8, backslash: bool) {
        self.pos += 1;
        while self.pos < self.src.len() {
            let b = self.src[self.pos];
            if backslash && b == b'\\' {
                self.pos += 2;
            } else if b == quote {
                self.pos += 1;
                if self.peek(0) != quote {
                    return;
                }
                self.pos += 1; // doubled quote
            } else {
                self.pos += 1;
            }
        }
        self.pos = self.src.len();
    }

    /// `$tag$...$tag$` (tag may be empty). Returns false if `$` does not open one.
    fn dollar_quoted(&mut self) -> bool {
        let open = self.pos;
        let mut i = open + 1;
        if i < self.src.len() && is_ident_start(self.src[i]) {
            while i < self.src.len() && is_ident_char(self.src[i]) && self.src[i] != b'$' {
                i += 1;
            }
        }
        if self.src.get(i) != Some(&b'$') {
            return false;
        }
        let tag = &self.src[open..=i];
        let body = i + 1;
        self.pos = match self.src[body..].windows(tag.len()).position(|w| w == tag) {
            Some(n) => body + n + tag.len(),
            None => self.src.len(),
        };
        true
    }

    fn number(&mut self) -> TokenKind {
        let mut seen_dot = false;
        while self.pos < self.src.len() {
            let b = self.src[self.pos];
            if has(b, NUMBER_CHAR) {
                // Exponent sign: 1e-5.
                if (b == b'e' || b == b'E') && matches!(self.peek(1), b'+' | b'-') {
                    self.pos += 1;
                }
                self.pos += 1;
            } else if b == b'.' && !seen_dot && self.peek(1) != b'.' {
                seen_dot = true;
                self.pos += 1;
            } else {
                break;
            }
        }
        TokenKind::Number
    }

    /// By the server's rule, [`operator_end`].
    fn operator(&mut self) -> TokenKind {
        self.pos = operator_end(self.src, self.pos);
        TokenKind::Operator
    }

    /// A one-byte token.
    fn single(&mut self, kind: TokenKind) -> TokenKind {
        self.pos += 1;
        kind
    }

    /// `$1`-style parameter (a digit follows the `$`).
    fn param(&mut self) -> TokenKind {
        self.pos += 1;
        while self.peek(0).is_ascii_digit() {
            self.pos += 1;
        }
        TokenKind::Param
    }

    /// A word, or a literal that a one-letter word prefixes: `E'..'`, `B'..'`, `X'..'`, `N'..'`, `U&'..'`, `U&".."`.
    fn word(&mut self) -> TokenKind {
        let next = self.peek(1);
        match self.peek(0) {
            b'e' | b'E' if next == b'\'' => {
                self.pos += 1;
                self.quoted(b'\'', true);
                TokenKind::String
            }
            b'b' | b'B' | b'x' | b'X' | b'n' | b'N' if next == b'\'' => {
                self.pos += 1;
                self.quoted(b'\'', false);
                TokenKind::String
            }
            b'u' | b'U' if next == b'&' && matches!(self.peek(2), b'\'' | b'"') => {
                let quote = self.peek(2);
                self.pos += 2;
                self.quoted(quote, false);
                if quote == b'\'' {
                    TokenKind::String
                } else {
                    TokenKind::QuotedIdent
                }
            }
            _ => {
                while self.src.get(self.pos).is_some_and(|&b| is_ident_char(b)) {
                    self.pos += 1;
                }
                TokenKind::Word
            }
        }
    }

    #[inline]
    pub fn next_token(&mut self) -> Option<Token<'a>> {
        self.skip_trivia();
        let start = self.pos;
        let b = *self.src.get(start)?;
        let next = self.peek(1);
        let kind = match b {
            b'\'' => {
                self.quoted(b'\'', false);
                TokenKind::String
            }
            b'"' => {
                self.quoted(b'"', false);
                TokenKind::QuotedIdent
            }
            b'$' if next.is_ascii_digit() => self.param(),
            b'$' if self.dollar_quoted() => TokenKind::String,
            b'0'..=b'9' => self.number(),
            b'.' if next.is_ascii_digit() => self.number(),
            b'(' | b')' | b',' | b'[' | b']' | b'.' => self.single(TokenKind::Punct),
            b':' if next == b':' => {
                self.pos += 2;
                TokenKind::Operator
            }
            b':' => self.single(TokenKind::Punct),
            b';' => self.single(TokenKind::Semicolon),
            b if is_ident_start(b) => self.word(),
            b if has(b, OPERATOR_CHAR) => self.operator(),
            // Anything else (stray `$`, `\`, `{`...) stands alone; the server will reject it.
            _ => self.single(TokenKind::Operator),
        };
        self.seen_token = true;
        Some(Token { kind, text: &self.src[start..self.pos], start })
    }
}

impl<'a> Iterator for Lexer<'a> {
    type Item = Token<'a>;

    fn next(&mut self) -> Option<Token<'a>> {
        self.next_token()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(sql: &str) -> Vec<(TokenKind, String)> {
        Lexer::new(sql).map(|t| (t.kind, String::from_utf8_lossy(t.text).into_owned())).collect()
    }

    #[test]
    fn literals_and_comments() {
        use TokenKind::*;
        let got = tokens("SELECT E'a\\'b', U&'x', $q$ it's; $$ $q$, $1 -- c\n /* a /* b */ c */ x.y");
        let want = [
            (Word, "SELECT"),
            (String, "E'a\\'b'"),
            (Punct, ","),
            (String, "U&'x'"),
            (Punct, ","),
            (String, "$q$ it's; $$ $q$"),
            (Punct, ","),
            (Param, "$1"),
            (Word, "x"),
            (Punct, "."),
            (Word, "y"),
        ];
        let want: Vec<_> = want.iter().map(|(k, s)| (*k, s.to_string())).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn operators_and_numbers() {
        use TokenKind::*;
        let got = tokens("a=-1.5e-3 b::int c->>'k' d<>e 'it''s'");
        let kinds: Vec<_> = got.iter().map(|(k, s)| (*k, s.as_str())).collect();
        assert_eq!(
            kinds,
            [
                (Word, "a"),
                (Operator, "="),
                (Operator, "-"),
                (Number, "1.5e-3"),
                (Word, "b"),
                (Operator, "::"),
                (Word, "int"),
                (Word, "c"),
                (Operator, "->>"),
                (String, "'k'"),
                (Word, "d"),
                (Operator, "<>"),
                (Word, "e"),
                (String, "'it''s'"),
            ]
        );
    }

    #[test]
    fn unterminated_runs_to_end() {
        assert_eq!(tokens("SELECT 'abc").len(), 2);
        assert_eq!(tokens("SELECT /* abc").len(), 1);
        assert_eq!(tokens("SELECT $a$ abc").len(), 2);
    }

    #[test]
    fn hint_only_before_first_token() {
        let mut lx = Lexer::new("-- x\n /*  PGCAUSAL:Leader */ SELECT 1");
        while lx.next_token().is_some() {}
        assert_eq!(lx.hint(), Some(Hint::Leader));
        let mut lx = Lexer::new("SELECT /* pgcausal:leader */ 1");
        while lx.next_token().is_some() {}
        assert_eq!(lx.hint(), None);
    }
}
