//! The fingerprint's single pass: tokens are recognized straight off the bytes by [`lexical`](crate::lexical)'s rules and the [`Lexer`](super::lexer)'s token kinds, never built, and mixed into the hash.

use crate::lexical::{has, operator_end, IDENT_START, OPERATOR_CHAR, WHITESPACE};
use crate::route::byte_classes::{lowered_at, Lowered, Window};
use crate::route::fingerprint_hash::{
    long_header, short_header, Hasher, TAG_HINT_FOLLOWER, TAG_HINT_LEADER, TAG_LITERAL, TAG_OPERATOR, TAG_PARAM,
    TAG_PUNCT, TAG_QUOTED, TAG_SEMICOLON, TAG_WORD,
};
use crate::route::keyword::Keyword;
use crate::route::lexer::parse_hint;
use crate::route::token_ends::{
    block_comment_end, dollar_quote_end, line_comment_end, number_at, number_end, param_end, prefixed, quoted_end,
    word_end, Prefixed,
};
use crate::route::Hint;

/// Result of [`fingerprint`](super::fingerprint()), which this scan computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    pub hash: u64,
    pub hint: Option<Hint>,
    pub first_keyword: Keyword,
    /// A `;` followed by more tokens.
    pub multi_statement: bool,
}

// Scan flags, one register. The first three are rare and tested with one branch per token.
/// No token yet: the next one sets the first keyword.
const FIRST: u8 = 1;
/// A `;` after some token: mixed in (and the string is multi-statement) if another token follows.
const PENDING_SEMICOLON: u8 = 2;
/// A `-` where an operand should be: a number right after it is one literal (a negative number).
const PENDING_MINUS: u8 = 4;
const RARE: u8 = FIRST | PENDING_SEMICOLON | PENDING_MINUS;
/// The previous token can end an operand: a `-` after it is binary.
const AFTER_OPERAND: u8 = 8;
/// Some token (even a `;`) was seen: later comments are no hints.
const SEEN_TOKEN: u8 = 16;
const MULTI_STATEMENT: u8 = 32;

// What a byte at a token boundary starts; one table lookup and a dense match dispatch it.
const SPACE: u8 = 0;
/// Letters, `_` and non-ASCII bytes (a one-letter word may prefix a literal: `E'..'`).
const WORD: u8 = 1;
const DIGIT: u8 = 2;
const DOT: u8 = 3;
/// `(`, `[` and `,`: punctuation after which a `-` is unary.
const OPEN: u8 = 4;
/// `)` and `]`: punctuation that ends an operand.
const CLOSE: u8 = 5;
const COLON: u8 = 6;
const SEMICOLON: u8 = 7;
const QUOTE: u8 = 8;
const DOUBLE_QUOTE: u8 = 9;
const DOLLAR: u8 = 10;
const MINUS: u8 = 11;
const SLASH: u8 = 12;
const OPERATOR: u8 = 13;
/// Anything else (`\`, `{`, control bytes...) stands alone as an operator; the server will reject it.
const OTHER: u8 = 14;

static STARTS: [u8; 256] = {
    let mut table = [OTHER; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = match c {
            _ if has(c, WHITESPACE) => SPACE,
            _ if has(c, IDENT_START) => WORD,
            b'0'..=b'9' => DIGIT,
            b'.' => DOT,
            b'(' | b'[' | b',' => OPEN,
            b')' | b']' => CLOSE,
            b':' => COLON,
            b';' => SEMICOLON,
            b'\'' => QUOTE,
            b'"' => DOUBLE_QUOTE,
            b'$' => DOLLAR,
            b'-' => MINUS,
            b'/' => SLASH,
            _ if has(c, OPERATOR_CHAR) => OPERATOR,
            _ => OTHER,
        };
        b += 1;
    }
    table
};

const LITERAL: u64 = TAG_LITERAL << 59;
const MINUS_OPERATOR: u64 = b'-' as u64 | short_header(TAG_OPERATOR, 1);

/// The fingerprint being computed. Every method is inlined and no helper takes
/// a `&mut Scan`, so the state lives in registers.
struct Scan<'a> {
    src: &'a [u8],
    hasher: Hasher,
    flags: u8,
    first_keyword: Keyword,
    hint: Option<Hint>,
}

impl Scan<'_> {
    /// Settles the pending state before a token; true when that consumed the
    /// token (a number after a unary minus). `word` is the token if it is a word.
    #[inline(always)]
    fn begin(&mut self, word: Option<&[u8]>, number: bool) -> bool {
        self.flags & RARE != 0 && self.begin_rare(|| word.map_or(Keyword::Other, first_keyword), number)
    }

    /// `keyword` is what the token is as a first keyword.
    #[inline(always)]
    fn begin_rare(&mut self, keyword: impl FnOnce() -> Keyword, number: bool) -> bool {
        let flags = self.flags;
        self.flags &= !RARE;
        if flags & PENDING_SEMICOLON != 0 {
            self.hasher.mix(TAG_SEMICOLON << 59);
            self.flags |= MULTI_STATEMENT;
        }
        if flags & FIRST != 0 {
            self.flags |= SEEN_TOKEN;
            self.first_keyword = keyword();
        }
        if flags & PENDING_MINUS != 0 {
            if number {
                self.hasher.mix(LITERAL);
                self.flags |= AFTER_OPERAND;
                return true;
            }
            self.hasher.mix(MINUS_OPERATOR);
        }
        false
    }

    /// The word of `len` bytes at `off` in the window (and whole in it), hashed from its lowercased copy.
    #[inline(always)]
    fn window_word(&mut self, lowered: &Lowered, off: usize, len: usize) {
        let first = lowered_at(lowered, off);
        if len < 8 {
            let bytes = first & low_bytes(len);
            if self.flags & RARE != 0 {
                self.begin_rare(|| packed_keyword(bytes as u128), false);
            }
            self.hasher.mix(bytes | short_header(TAG_WORD, len));
        } else {
            if self.flags & RARE != 0 {
                self.begin_rare(|| first_keyword(&lowered[off..off + len]), false);
            }
            // What `Hasher::token` does.
            self.hasher.mix(long_header(TAG_WORD, len));
            self.hasher.mix(first);
            let mut done = 8;
            while done + 8 <= len {
                self.hasher.mix(lowered_at(lowered, off + done));
                done += 8;
            }
            if done < len {
                self.hasher.mix(lowered_at(lowered, off + done) & low_bytes(len - done));
            }
        }
        self.flags |= AFTER_OPERAND;
    }

    /// Any word (`text` in any case).
    #[inline(always)]
    fn word(&mut self, text: &[u8]) {
        self.begin(Some(text), false);
        self.hasher.token(TAG_WORD, text, true);
        self.flags |= AFTER_OPERAND;
    }

    #[inline(always)]
    fn number(&mut self) {
        if !self.begin(None, true) {
            self.hasher.mix(LITERAL);
        }
        self.flags |= AFTER_OPERAND;
    }

    /// A string literal (any form).
    #[inline(always)]
    fn literal(&mut self) {
        self.begin(None, false);
        self.hasher.mix(LITERAL);
        self.flags |= AFTER_OPERAND;
    }

    /// A quoted identifier or a parameter: hashed as written.
    #[inline(always)]
    fn exact(&mut self, tag: u64, text: &[u8]) {
        self.begin(None, false);
        self.hasher.token(tag, text, false);
        self.flags |= AFTER_OPERAND;
    }

    #[inline(always)]
    fn punct(&mut self, b: u8, ends_operand: bool) {
        self.begin(None, false);
        self.hasher.mix(b as u64 | short_header(TAG_PUNCT, 1));
        self.flags = self.flags & !AFTER_OPERAND | if ends_operand { AFTER_OPERAND } else { 0 };
    }

    /// A one-byte operator.
    #[inline(always)]
    fn operator_byte(&mut self, b: u8) {
        self.begin(None, false);
        if b == b'-' && self.flags & AFTER_OPERAND == 0 {
            self.flags |= PENDING_MINUS;
            return;
        }
        self.hasher.mix(b as u64 | short_header(TAG_OPERATOR, 1));
        self.flags &= !AFTER_OPERAND;
    }

    #[inline(always)]
    fn operator(&mut self, text: &[u8]) {
        if let [b] = text {
            return self.operator_byte(*b);
        }
        self.begin(None, false);
        self.hasher.token(TAG_OPERATOR, text, false);
        self.flags &= !AFTER_OPERAND;
    }

    #[inline(always)]
    fn semicolon(&mut self) {
        if self.flags & FIRST == 0 {
            self.flags |= PENDING_SEMICOLON;
        }
        if self.flags & PENDING_MINUS != 0 {
            self.hasher.mix(MINUS_OPERATOR);
        }
        self.flags = self.flags & !(PENDING_MINUS | AFTER_OPERAND) | SEEN_TOKEN;
    }

    #[inline(always)]
    fn block_comment(&mut self, start: usize) -> usize {
        let (end, body_end) = block_comment_end(self.src, start);
        if self.flags & SEEN_TOKEN == 0 && self.hint.is_none() {
            self.hint = hint_in(&self.src[start + 2..body_end.max(start + 2)]);
        }
        end
    }

    fn finish(mut self) -> Fingerprint {
        if self.flags & PENDING_MINUS != 0 {
            self.hasher.mix(MINUS_OPERATOR);
        }
        match self.hint {
            Some(Hint::Leader) => self.hasher.mix(TAG_HINT_LEADER),
            Some(Hint::Follower) => self.hasher.mix(TAG_HINT_FOLLOWER),
            None => {}
        }
        Fingerprint {
            hash: self.hasher.finish(),
            hint: self.hint,
            first_keyword: self.first_keyword,
            multi_statement: self.flags & MULTI_STATEMENT != 0,
        }
    }
}

#[cold]
#[inline(never)]
fn first_keyword(word: &[u8]) -> Keyword {
    Keyword::from_word(word)
}

#[cold]
#[inline(never)]
fn packed_keyword(packed: u128) -> Keyword {
    Keyword::from_packed(packed)
}

#[cold]
#[inline(never)]
fn hint_in(comment_body: &[u8]) -> Option<Hint> {
    parse_hint(comment_body)
}

/// The low `n` bytes of a word (`n` in 1..=7).
#[inline(always)]
fn low_bytes(n: usize) -> u64 {
    u64::MAX >> (64 - 8 * n)
}

/// A word the window does not hold whole (or a one-letter word before a quote or `&`) at `start`; returns its end.
#[inline(always)]
fn slow_word(scan: &mut Scan, src: &[u8], start: usize) -> usize {
    match prefixed(src, start) {
        Prefixed::Literal(end) => {
            scan.literal();
            end
        }
        Prefixed::QuotedIdent(end) => {
            scan.exact(TAG_QUOTED, &src[start..end]);
            end
        }
        Prefixed::Word => {
            let end = word_end(src, start);
            scan.word(&src[start..end]);
            end
        }
    }
}

/// See [`fingerprint`](super::fingerprint()). Long where its length is its speed: one loop, one dispatch a token, state in registers.
pub(crate) fn scan(src: &[u8]) -> Fingerprint {
    let mut scan = Scan { src, hasher: Hasher::new(), flags: FIRST, first_keyword: Keyword::None, hint: None };
    let mut lowered: Lowered = [0; 80];
    // Most statements start with a word.
    let mut window = if src.is_empty() { Window { base: 0, ident: 0 } } else { Window::load(src, 0, &mut lowered) };
    let mut at = 0;
    while let Some(&b) = src.get(at) {
        // Like the Lexer's peek: zero past the end of input.
        let next = || src.get(at + 1).copied().unwrap_or(0);
        at = match STARTS[b as usize] & 15 {
            SPACE => at + 1,
            WORD => {
                let mut off = at - window.base;
                // A word of up to 16 bytes starting in the first 48 fits in the window.
                if off >= 48 {
                    window = Window::load(src, at, &mut lowered);
                    off = 0;
                }
                loop {
                    // The mask is zero past the window, so the word ends by its end.
                    let len = (!(window.ident >> off)).trailing_zeros() as usize;
                    if off + len >= Window::LEN || (len == 1 && matches!(lowered[off + 1], b'\'' | b'&')) {
                        break slow_word(&mut scan, src, window.base + off);
                    }
                    scan.window_word(&lowered, off, len);
                    off += len;
                    // Common joints between words (`a b`, `a.b`, `a, b`, `f(a`, `a) b`, `a = b`, `* FROM`) are
                    // taken here, without a dispatch each: nothing is pending after a word, so they are mixed
                    // directly, and an operator byte before a word is a whole operator (a binary one).
                    let mut next_word = off + (lowered[off] == b' ') as usize;
                    let joint = lowered[next_word];
                    let mix = match joint {
                        b'.' | b',' | b'(' | b')' => joint as u64 | short_header(TAG_PUNCT, 1),
                        b'=' | b'<' | b'>' | b'+' | b'-' | b'*' | b'/' => joint as u64 | short_header(TAG_OPERATOR, 1),
                        _ => 0,
                    };
                    if mix != 0 {
                        next_word += 1;
                        next_word += (lowered[next_word] == b' ') as usize;
                    }
                    if next_word >= 48 || next_word == off || STARTS[lowered[next_word] as usize] != WORD {
                        break window.base + off;
                    }
                    if mix != 0 {
                        scan.hasher.mix(mix);
                    }
                    off = next_word;
                }
            }
            DIGIT => {
                scan.number();
                number_at(src, at)
            }
            DOT if next().is_ascii_digit() => {
                scan.number();
                number_end(src, at)
            }
            DOT | OPEN => {
                scan.punct(b, false);
                at + 1
            }
            CLOSE => {
                scan.punct(b, true);
                at + 1
            }
            COLON if next() == b':' => {
                scan.operator(b"::");
                at + 2
            }
            COLON => {
                scan.punct(b, false);
                at + 1
            }
            SEMICOLON => {
                scan.semicolon();
                at + 1
            }
            QUOTE => {
                scan.literal();
                quoted_end(src, at, b'\'')
            }
            DOUBLE_QUOTE => {
                let end = quoted_end(src, at, b'"');
                scan.exact(TAG_QUOTED, &src[at..end]);
                end
            }
            DOLLAR if next().is_ascii_digit() => {
                let end = param_end(src, at);
                scan.exact(TAG_PARAM, &src[at..end]);
                end
            }
            DOLLAR => match dollar_quote_end(src, at) {
                Some(end) => {
                    scan.literal();
                    end
                }
                None => {
                    scan.operator_byte(b);
                    at + 1
                }
            },
            MINUS if next() == b'-' => line_comment_end(src, at),
            SLASH if next() == b'*' => scan.block_comment(at),
            MINUS | SLASH | OPERATOR if has(next(), OPERATOR_CHAR) => {
                let end = operator_end(src, at);
                scan.operator(&src[at..end]);
                end
            }
            // One-byte operators, and OTHER (the mask only makes the match exhaustive).
            _ => {
                scan.operator_byte(b);
                at + 1
            }
        };
        // A token is often followed by one space (`a, b`, `x = 1`): skipped here rather than by another dispatch.
        at += (src.get(at) == Some(&b' ')) as usize;
    }
    scan.finish()
}
