//! The test oracle for the fingerprint: the Lexer-based fingerprint the fast scanner replaced, which the scanner must match.

use crate::route::fingerprint::Fingerprint;
use crate::route::fingerprint_hash::*;
use crate::route::keyword::Keyword;
use crate::route::lexer::{Lexer, TokenKind};
use crate::route::Hint;

/// The former `fingerprint()`, token by token through the shared [`Lexer`].
pub(crate) fn fingerprint_oracle(sql: &str) -> Fingerprint {
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

/// Differential tests: the fast scanner against the oracle, on the crate's own
/// test SQL, on generated fragment soups and byte noise, and on same-shape pairs.
mod tests {
    use super::fingerprint_oracle;
    use crate::route::fingerprint::fingerprint;

    /// Asserts both implementations agree on `sql`, and on each of its prefixes if asked.
    fn check(sql: &str, prefixes: bool) {
        assert_eq!(fingerprint(sql), fingerprint_oracle(sql), "{sql:?}");
        if prefixes {
            for (end, _) in sql.char_indices() {
                let prefix = &sql[..end];
                assert_eq!(fingerprint(prefix), fingerprint_oracle(prefix), "{prefix:?}");
            }
        }
    }

    /// SplitMix64: a fixed-seed generator, so failures reproduce.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }
    }

    /// The string literals (and byte strings) of a Rust source file, unescaped.
    /// Char literals, lifetimes and `//` comments are skipped; a misread only adds odd inputs.
    fn string_literals(source: &str) -> Vec<String> {
        let chars: Vec<char> = source.chars().collect();
        let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
        let mut found = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            match chars[i] {
                '/' if at(i + 1) == '/' => {
                    while i < chars.len() && chars[i] != '\n' {
                        i += 1;
                    }
                }
                '\'' if at(i + 1) == '\\' => {
                    i += 3;
                    while i < chars.len() && chars[i] != '\'' {
                        i += 1;
                    }
                    i += 1;
                }
                '\'' if at(i + 2) == '\'' => i += 3,
                '"' => {
                    let mut text = String::new();
                    i += 1;
                    while i < chars.len() && chars[i] != '"' {
                        if chars[i] != '\\' {
                            text.push(chars[i]);
                            i += 1;
                            continue;
                        }
                        i += 2;
                        match at(i - 1) {
                            'n' => text.push('\n'),
                            't' => text.push('\t'),
                            'r' => text.push('\r'),
                            '0' => text.push('\0'),
                            'x' => {
                                let hex: String = chars[i.min(chars.len())..(i + 2).min(chars.len())].iter().collect();
                                text.push(char::from(u8::from_str_radix(&hex, 16).unwrap_or(b'?')));
                                i += 2;
                            }
                            'u' => {
                                let close = (i..chars.len()).find(|&j| chars[j] == '}').unwrap_or(chars.len());
                                let hex: String = chars[(i + 1).min(close)..close].iter().collect();
                                text.push(u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32).unwrap_or('?'));
                                i = close + 1;
                            }
                            '\n' => {
                                while at(i).is_whitespace() {
                                    i += 1;
                                }
                            }
                            other => text.push(other),
                        }
                    }
                    found.push(text);
                    i += 1;
                }
                _ => i += 1,
            }
        }
        found
    }

    #[test]
    fn agrees_on_the_crates_test_sql() {
        let sources = [
            include_str!("tests.rs"),
            include_str!("fingerprint.rs"),
            include_str!("lexer.rs"),
            include_str!("scan.rs"),
            include_str!("classify.rs"),
            include_str!("session_statements.rs"),
            include_str!("fallback.rs"),
            include_str!("cache.rs"),
            include_str!("token_ends.rs"),
            include_str!("../lexical.rs"),
        ];
        let strings: Vec<String> = sources.iter().flat_map(|s| string_literals(s)).collect();
        assert!(strings.len() > 300, "only {} strings found", strings.len());
        let join = strings.iter().find(|s| s.starts_with("SELECT o.id, o.created_at")).expect("JOIN_200");
        assert!(join.ends_with("GROUP BY 1, 2, 3, 4") && join.len() > 200, "{join:?}");
        for sql in &strings {
            check(sql, true);
        }
    }

    // Fragment tables, kept compact.
    #[rustfmt::skip]
    const WORDS: &[&str] = &[
        "SELECT", "select", "FROM", "where", "INSERT", "into", "VALUES", "update", "SET", "BEGIN", "commit", "with",
        "AS", "and", "For", "a", "t", "e", "E", "b", "X", "n", "N", "u", "U", "abc", "pgbench_accounts", "x$1", "_u",
        "customer_id", "ABC", "a_very_long_identifier_of_many_bytes", "Ünïcödé", "日本語", "checkpoint", "end",
    ];
    const QUOTED: &[&str] = &["\"Foo\"", "\"foo\"", "\"a\"\"b\"", "\"\"", "U&\"d\\0061t\"", "u&\"x\"", "\"é\""];
    #[rustfmt::skip]
    const LITERALS: &[&str] = &[
        "'x'", "''", "'it''s'", "E'a\\'b'", "e'\\\\'", "B'101'", "b'1'", "X'ff'", "x'FF'", "N'nat'", "n''",
        "U&'\\0041'", "u&'x'", "$$body$$", "$tag$ x $ $tag$", "$q$ ; $q$", "$_1$ $_1$", "$é$x$é$", "1", "12345",
        "123456789012", "1.5", ".5", "1e10", "1.5e-3", "1E+5", "0x1F", "1_000", "123abc", "5.", "1e", "1.2.3",
    ];
    const PARAMS: &[&str] = &["$1", "$2", "$10", "$", "$0"];
    #[rustfmt::skip]
    const OPERATORS: &[&str] = &[
        "=", "<", ">", "<=", ">=", "<>", "!=", "+", "-", "*", "/", "||", "->", "->>", "#>", "@>", "<@", "~~", "!~",
        "=-", "<-", "*-", "+-", "-+", "@-", "::", ":", "%", "^", "&", "|", "`", "?", "~", "!", "#", "@",
    ];
    const PUNCT: &[&str] = &["(", ")", ",", "[", "]", ".", ";", ";", ".."];
    #[rustfmt::skip]
    const TRIVIA: &[&str] = &[
        " ", "  ", "\n", "\t", "\r\n", "\x0b", "\x0c", "-- c\n", "--", "-- x", "/* c */", "/* a /* b */ c */",
        "/*/ */", "/**/", "/* pgcausal:leader */", "/*pgcausal:follower*/", "/* PGCAUSAL:LEADER */",
        "/* pgcausal:other */", "-- pgcausal:leader\n",
    ];
    const UNTERMINATED: &[&str] = &["'abc", "E'a\\", "\"Foo", "$$ x", "$t$ x $t", "/* x", "/* /* */", "U&'x", "b'1"];
    const ODD: &[&str] = &["\\", "{", "}", "\0", "\x01", "\x7f", "é", "🦀", "$", "&", "U&", "e&"];

    fn fragment(rng: &mut Rng) -> &'static str {
        let kinds: [&[&str]; 9] = [WORDS, QUOTED, LITERALS, PARAMS, OPERATORS, PUNCT, TRIVIA, UNTERMINATED, ODD];
        // Words, literals and operators are commonest in real SQL.
        let weights = [6, 1, 4, 1, 3, 3, 2, 1, 1];
        let mut roll = rng.below(weights.iter().sum());
        for (kind, weight) in kinds.iter().zip(weights) {
            if roll < weight {
                return rng.pick(kind);
            }
            roll -= weight;
        }
        unreachable!()
    }

    #[test]
    fn agrees_on_generated_fragment_soups() {
        let mut rng = Rng(0x5eed_0001);
        for case in 0..20_000 {
            let mut sql = String::new();
            for _ in 0..1 + rng.below(24) {
                sql.push_str(fragment(&mut rng));
                // Glued fragments make new tokens (`e'x'`, `1e-5`, `=-`, `--`); spaced ones stay apart.
                if rng.below(3) != 0 {
                    sql.push_str(rng.pick(&[" ", " ", "\n", "\t"]));
                }
            }
            check(&sql, case < 2_000);
        }
    }

    #[test]
    fn agrees_on_byte_noise() {
        // Bytes that start or end tokens, in every order; multi-byte characters stay whole.
        let alphabet: Vec<char> = "'\"$-/*;:.eEbBxXnNuU&_a1 9\n\\+=<>!@#().é".chars().collect();
        let mut rng = Rng(0x5eed_0002);
        for _ in 0..20_000 {
            let sql: String = (0..rng.below(40)).map(|_| alphabet[rng.below(alphabet.len())]).collect();
            check(&sql, false);
        }
        check(&"a".repeat(100_000), false);
        check(&format!("SELECT '{}'", "x".repeat(100_000)), false);
        check(&format!("/* {}", "/*".repeat(10_000)), false);
    }

    #[test]
    fn agrees_across_window_boundaries() {
        // Runs of words and their joints, long enough to cross several 64-byte windows,
        // with words of every length up to past 16 bytes and joints of every kind.
        let joints = [
            " ", "  ", ".", ". ", ",", ", ", " , ", "(", " ( ", ")", ") ", "=", " = ", " =", "\n", "\t", " < ", ">",
            "-", " - ", "--", " -", "*", " * ", "/", " /", "+", "<=", " != ", "=-", " ||",
        ];
        let letters = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_0123456789$\xc3\xa9";
        let mut rng = Rng(0x5eed_0004);
        for _ in 0..3_000 {
            let mut sql = String::new();
            let target = 40 + rng.below(300);
            while sql.len() < target {
                let len = 1 + rng.below(24);
                let mut word = vec![letters[rng.below(52)]];
                word.extend((1..len).map(|_| letters[rng.below(letters.len() - 2)]));
                sql.push_str(&String::from_utf8_lossy(&word));
                // Now and then something else: a prefix before a quote, a number, a comment, an operator.
                let extra =
                    [" 'x'", "'y'", " 12", " -1", " /* c */ ", " -- c\n", "::int", " <= ", " é", "", "", "", ""];
                sql.push_str(rng.pick(&extra));
                sql.push_str(rng.pick(&joints));
            }
            check(&sql, false);
            // And every window alignment of the same text.
            for cut in 1..4 {
                check(&sql[sql.char_indices().nth(cut).map_or(0, |(i, _)| i)..], false);
            }
        }
    }

    /// A statement shape: `§` marks a literal slot, `·` a whitespace slot; unquoted words are re-cased at random.
    const SHAPES: &[&str] = &[
        "SELECT ·abalance·FROM·pgbench_accounts·WHERE·aid·=·§;",
        "SELECT·o.id,·c.name,·sum(li.qty·*·li.price)·AS·total·FROM·orders·o·JOIN·customers·c·ON·c.id·=·o.cid·\
         WHERE·o.created_at·>·$1·AND·c.region·=·§·GROUP·BY·1,·2",
        "insert·into·t·(a,·b)·values·(§,·§),·(§,§)",
        "UPDATE·t·SET·a·=·a·+·§·WHERE·b·IN·(§,·§,·§)·AND·c·=·$1",
        "select·f(§,·§)::text,·\"Quoted\"·from·t·where·x·@>·§·and·y·<>·§·and·z[§]·=·§",
        "BEGIN;·SELECT·f(§);·COMMIT",
    ];
    #[rustfmt::skip]
    const SAME_LITERALS: &[&str] = &[
        "'x'", "'it''s'", "E'a\\'b'", "$$x$$", "$t$ ; $t$", "B'1'", "X'ff'", "N'n'", "U&'\\0041'", "1", "42", "1.5",
        ".5", "1e3", "-1", "-2.5", "- 7",
    ];
    const SAME_SPACES: &[&str] = &[" ", "  ", "\n", "\t ", " /* c */ ", " -- c\n", "\r\n", " /* a /* b */ */ "];

    fn render(shape: &str, rng: &mut Rng) -> String {
        let mut out = String::new();
        let mut quoted = false;
        for c in shape.chars() {
            quoted ^= c == '"';
            match c {
                '§' => out.push_str(rng.pick(SAME_LITERALS)),
                '·' => out.push_str(rng.pick(SAME_SPACES)),
                c if !quoted && rng.below(2) == 0 => out.push(c.to_ascii_uppercase()),
                c if !quoted => out.push(c.to_ascii_lowercase()),
                c => out.push(c),
            }
        }
        out
    }

    #[test]
    fn same_shapes_share_a_fingerprint_and_others_do_not() {
        let mut rng = Rng(0x5eed_0003);
        for shape in SHAPES {
            let base = render(shape, &mut rng);
            for _ in 0..300 {
                let twin = render(shape, &mut rng);
                assert_eq!(fingerprint(&twin).hash, fingerprint(&base).hash, "{base:?} vs {twin:?}");
                assert_eq!(fingerprint_oracle(&twin), fingerprint(&twin), "{twin:?}");
            }
            // Changing a word, a quoted name, an operator or the statement count changes the shape.
            let changed = [
                base.replacen('t', "tt", 1),
                base.replacen('(', "((", 1) + ")",
                base.replacen('=', "<", 1),
                base.replacen(',', ";", 1),
                base.replacen('$', "$9", 1),
                format!("{base};SELECT 1"),
            ];
            for other in changed.iter().filter(|o| **o != base) {
                assert_ne!(fingerprint(other).hash, fingerprint(&base).hash, "{base:?} vs {other:?}");
                assert_eq!(fingerprint_oracle(other), fingerprint(other), "{other:?}");
            }
        }
    }
}
