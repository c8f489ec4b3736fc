//! One-pass, allocation-free 64-bit fingerprint of a SQL string, plus its hint, first keyword and statement count.
//!
//! Two strings share a fingerprint when they differ only in literal values,
//! comments, whitespace and the case of unquoted words, which is exactly what
//! the routing decision cannot depend on (results that do depend on a literal
//! are marked not cacheable by the classifier).

use crate::route::lexer::{Lexer, TokenKind};
use crate::route::Hint;

/// Result of [`fingerprint`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    pub hash: u64,
    pub hint: Option<Hint>,
    pub first_keyword: Keyword,
    /// A `;` followed by more tokens.
    pub multi_statement: bool,
}

macro_rules! keywords {
    ($($variant:ident = $text:literal,)*) => {
        /// The first word of the SQL string, for cheap checks before any parsing.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Keyword {
            $($variant,)*
            /// Some other word, or a non-word first token such as `(`.
            Other,
            /// No token at all (empty query).
            None,
        }

        impl Keyword {
            fn from_lowercase(word: &[u8]) -> Keyword {
                match word {
                    $($text => Keyword::$variant,)*
                    _ => Keyword::Other,
                }
            }
        }
    };
}

keywords! {
    Select = b"select", With = b"with", Values = b"values", Table = b"table", Show = b"show",
    Explain = b"explain", Insert = b"insert", Update = b"update", Delete = b"delete",
    Merge = b"merge", Copy = b"copy", Begin = b"begin", Start = b"start", Commit = b"commit",
    End = b"end", Rollback = b"rollback", Abort = b"abort", Savepoint = b"savepoint",
    Release = b"release", Prepare = b"prepare", Execute = b"execute", Deallocate = b"deallocate",
    Set = b"set", Reset = b"reset", Discard = b"discard", Listen = b"listen",
    Unlisten = b"unlisten", Notify = b"notify", Declare = b"declare", Fetch = b"fetch",
    Move = b"move", Close = b"close", Do = b"do", Call = b"call", Lock = b"lock",
    Vacuum = b"vacuum", Analyze = b"analyze", Checkpoint = b"checkpoint", Refresh = b"refresh",
    Alter = b"alter", Create = b"create", Drop = b"drop", Truncate = b"truncate",
    Grant = b"grant", Revoke = b"revoke", Comment = b"comment", Reindex = b"reindex",
    Cluster = b"cluster",
}

impl Keyword {
    fn from_word(word: &[u8]) -> Keyword {
        let mut buf = [0u8; 12];
        if word.len() > buf.len() {
            return Keyword::Other;
        }
        for (dst, src) in buf.iter_mut().zip(word) {
            *dst = src.to_ascii_lowercase();
        }
        Keyword::from_lowercase(&buf[..word.len()])
    }
}

// Per-token tags, so that e.g. a word and a quoted identifier never hash alike.
const TAG_WORD: u64 = 1;
const TAG_QUOTED: u64 = 2;
const TAG_LITERAL: u64 = 3;
const TAG_PARAM: u64 = 4;
const TAG_PUNCT: u64 = 5;
const TAG_OPERATOR: u64 = 6;
const TAG_SEMICOLON: u64 = 7;
const TAG_HINT_LEADER: u64 = 8;
const TAG_HINT_FOLLOWER: u64 = 9;
/// Flag on a tag for tokens of 8 bytes or more (tags must stay below 16).
const LONG: u64 = 16;

/// FxHash-style multiply-rotate mixing, 8 bytes at a time, finished with the
/// murmur3 finalizer so every output bit depends on every input bit.
struct Hasher {
    state: u64,
}

const LANES: u64 = 0x0101_0101_0101_0101;

/// ASCII-lowercases 8 bytes at once (bytes >= 0x80 are left alone).
#[inline(always)]
fn ascii_lowercase(word: u64) -> u64 {
    let heptets = word & (LANES * 0x7f);
    let at_least_a = heptets + LANES * (0x80 - b'A' as u64);
    let above_z = heptets + LANES * (0x7f - b'Z' as u64);
    let upper = at_least_a & !above_z & !word & (LANES * 0x80);
    word | (upper >> 2)
}

/// Loads 1..=7 bytes as a zero-padded little-endian word with a few
/// overlapping loads: a `memcpy` into a stack buffer costs a libc call and a
/// store-forwarding stall per token.
#[inline(always)]
fn load_partial(bytes: &[u8]) -> u64 {
    let n = bytes.len();
    if n >= 4 {
        let low = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes")) as u64;
        let high = u32::from_le_bytes(bytes[n - 4..].try_into().expect("4 bytes")) as u64;
        low | (high << ((n - 4) * 8))
    } else {
        let (first, middle, last) = (bytes[0] as u64, bytes[n / 2] as u64, bytes[n - 1] as u64);
        first | (middle << (8 * (n / 2))) | (last << (8 * (n - 1)))
    }
}

impl Hasher {
    const SEED: u64 = 0x243f_6a88_85a3_08d3;
    const K: u64 = 0x517c_c1b7_2722_0a95;

    fn new() -> Self {
        Hasher { state: Self::SEED }
    }

    #[inline(always)]
    fn mix(&mut self, word: u64) {
        self.state = (self.state.rotate_left(5) ^ word).wrapping_mul(Self::K);
    }

    /// Hashes a whole token. Short ones (up to 7 bytes: most words, all
    /// punctuation) take a single mix: bytes in the low 56 bits, tag and length
    /// in the top byte. Longer ones mix a header, then 8-byte words, the last
    /// zero-padded. Bytes are optionally ASCII-lowercased.
    #[inline(always)]
    fn token(&mut self, tag: u64, bytes: &[u8], lowercase: bool) {
        let fold = |w: u64| if lowercase { ascii_lowercase(w) } else { w };
        let n = bytes.len() as u64;
        if n == 0 {
            self.mix(tag << 59);
        } else if n < 8 {
            self.mix(fold(load_partial(bytes)) | (tag << 59) | (n << 56));
        } else {
            self.mix(((tag | LONG) << 59) | n);
            let mut chunks = bytes.chunks_exact(8);
            for chunk in &mut chunks {
                self.mix(fold(u64::from_le_bytes(chunk.try_into().expect("8 bytes"))));
            }
            let rest = chunks.remainder();
            if !rest.is_empty() {
                self.mix(fold(load_partial(rest)));
            }
        }
    }

    fn finish(self) -> u64 {
        let mut h = self.state;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

/// Fingerprints `sql` in one pass without allocating.
///
/// Literals (strings in every form, numbers, a unary minus before a number)
/// hash as one placeholder; `$n` parameters keep their number; comments and
/// whitespace vanish; unquoted words are case-folded; a trailing `;` is
/// ignored. The hint comment is mixed in, so a hinted statement never shares a
/// cache entry with its unhinted twin.
pub fn fingerprint(sql: &str) -> Fingerprint {
    let mut lexer = Lexer::new(sql);
    let mut hasher = Hasher::new();
    let mut first_keyword = Keyword::None;
    let mut multi_statement = false;
    // Whether the previous token can end an operand: a `-` after one is binary.
    let mut after_operand = false;
    let mut pending_minus = false;
    let mut pending_semicolon = false;

    while let Some(token) = lexer.next_token() {
        if token.kind == TokenKind::Semicolon {
            pending_semicolon = first_keyword != Keyword::None;
            if pending_minus {
                hasher.token(TAG_OPERATOR, b"-", false);
                pending_minus = false;
            }
            after_operand = false;
            continue;
        }
        if pending_semicolon {
            hasher.token(TAG_SEMICOLON, b"", false);
            multi_statement = true;
            pending_semicolon = false;
        }
        if first_keyword == Keyword::None {
            first_keyword = match token.kind {
                TokenKind::Word => Keyword::from_word(token.text),
                _ => Keyword::Other,
            };
        }
        if pending_minus {
            pending_minus = false;
            if token.kind == TokenKind::Number {
                hasher.token(TAG_LITERAL, b"", false);
                after_operand = true;
                continue;
            }
            hasher.token(TAG_OPERATOR, b"-", false);
        }
        match token.kind {
            TokenKind::Word => hasher.token(TAG_WORD, token.text, true),
            TokenKind::QuotedIdent => hasher.token(TAG_QUOTED, token.text, false),
            TokenKind::String | TokenKind::Number => hasher.token(TAG_LITERAL, b"", false),
            TokenKind::Param => hasher.token(TAG_PARAM, token.text, false),
            TokenKind::Punct => hasher.token(TAG_PUNCT, token.text, false),
            TokenKind::Operator if token.text == b"-" && !after_operand => {
                pending_minus = true;
                continue;
            }
            TokenKind::Operator => hasher.token(TAG_OPERATOR, token.text, false),
            TokenKind::Semicolon => unreachable!("handled above"),
        }
        after_operand = match token.kind {
            TokenKind::Operator => false,
            TokenKind::Punct => matches!(token.text[0], b')' | b']'),
            _ => true,
        };
    }
    if pending_minus {
        hasher.token(TAG_OPERATOR, b"-", false);
    }
    let hint = lexer.hint();
    match hint {
        Some(Hint::Leader) => hasher.mix(TAG_HINT_LEADER),
        Some(Hint::Follower) => hasher.mix(TAG_HINT_FOLLOWER),
        None => {}
    }
    Fingerprint { hash: hasher.finish(), hint, first_keyword, multi_statement }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_loads_zero_pad() {
        let bytes = *b"abcdefg";
        for n in 1..8 {
            let mut padded = [0u8; 8];
            padded[..n].copy_from_slice(&bytes[..n]);
            assert_eq!(load_partial(&bytes[..n]), u64::from_le_bytes(padded), "{n} bytes");
        }
    }

    #[test]
    fn swar_lowercase_matches_std() {
        let input = *b"AZaz@[`{";
        let got = ascii_lowercase(u64::from_le_bytes(input)).to_le_bytes();
        assert_eq!(&got, b"azaz@[`{");
        for b in 0..=255u8 {
            let got = ascii_lowercase(u64::from(b) * LANES).to_le_bytes();
            assert_eq!(got, [b.to_ascii_lowercase(); 8], "byte {b}");
        }
    }

    fn fp(sql: &str) -> u64 {
        fingerprint(sql).hash
    }

    #[test]
    fn literals_do_not_matter() {
        let same = [
            (
                "SELECT abalance FROM pgbench_accounts WHERE aid = 123;",
                "select  abalance\nFROM pgbench_accounts -- c\n WHERE aid=98765",
            ),
            ("SELECT * FROM t WHERE a = 'x'", "SELECT * FROM t WHERE a = E'y\\'z'"),
            ("SELECT * FROM t WHERE a = 'x'", "SELECT * FROM t WHERE a = $tag$ ; $tag$"),
            ("SELECT * FROM t WHERE a = 'x'", "SELECT * FROM t WHERE a = U&'\\0041'"),
            ("SELECT * FROM t WHERE a = 1.5", "SELECT * FROM t WHERE a = -2e10"),
            (
                "UPDATE pgbench_accounts SET abalance = abalance + -12 WHERE aid = 5;",
                "UPDATE pgbench_accounts SET abalance = abalance + 4211 WHERE aid = 99",
            ),
            ("SELECT /* x */ 1", "/* y */ SELECT 2"),
            ("SELECT f(1, 2)", "SELECT f( 3,4 )"),
        ];
        for (a, b) in same {
            assert_eq!(fp(a), fp(b), "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn shape_matters() {
        let different = [
            ("SELECT a FROM t", "SELECT b FROM t"),
            ("SELECT a FROM t", "SELECT a FROM u"),
            ("SELECT a FROM t", "SELECT \"A\" FROM t"),
            ("SELECT $1", "SELECT $2"),
            ("SELECT a - 1", "SELECT a + 1"),
            ("SELECT ab", "SELECT a b"),
            ("SELECT 1", "/* pgcausal:leader */ SELECT 1"),
            ("/* pgcausal:follower */ SELECT 1", "/* pgcausal:leader */ SELECT 1"),
            ("SELECT 1", "SELECT 1; SELECT 1"),
            ("SELECT 'a'", "SELECT a"),
            ("SELECT f(1)", "SELECT g(1)"),
            ("SELECT 1 FROM t", "SELECT 1 FROM t FOR UPDATE"),
        ];
        for (a, b) in different {
            assert_ne!(fp(a), fp(b), "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn case_folding_and_quotes() {
        assert_eq!(fp("SELECT Abc FROM T"), fp("select abc from t"));
        assert_ne!(fp("SELECT \"Abc\" FROM t"), fp("SELECT \"abc\" FROM t"));
    }

    #[test]
    fn trailing_semicolon_is_not_multi() {
        let f = fingerprint("SELECT 1;  -- done\n");
        assert!(!f.multi_statement);
        assert_eq!(f.hash, fp("SELECT 1"));
        assert!(fingerprint("SELECT 1; INSERT INTO t VALUES (1)").multi_statement);
        assert!(!fingerprint(";;SELECT 1").multi_statement);
    }

    #[test]
    fn reports_hint_and_keyword() {
        let f = fingerprint("-- c\n  /* pgcausal:follower */ WITH x AS (SELECT 1) SELECT * FROM x");
        assert_eq!(f.hint, Some(Hint::Follower));
        assert_eq!(f.first_keyword, Keyword::With);
        assert_eq!(fingerprint("  ").first_keyword, Keyword::None);
        assert_eq!(fingerprint("(SELECT 1)").first_keyword, Keyword::Other);
        assert_eq!(fingerprint("Checkpoint").first_keyword, Keyword::Checkpoint);
    }
}
