//! Where a token or comment that starts at a given byte ends, by the [`Lexer`](super::lexer)'s rules, without building tokens (the Lexer scans byte by byte; these skip bodies with memchr, and the oracle test compares the two).
//!
//! The fingerprint's scanner calls these for every token but the words its
//! window holds and one-byte punctuation. Each returns an end offset no greater
//! than `src.len()`; unterminated literals and comments run to the end of input.

use memchr::{memchr, memchr2, memmem};

use crate::lexical::{has, IDENT_CHAR, IDENT_START, NUMBER_CHAR};
use crate::route::byte_classes::{find_byte, load_at, non_digit_bytes, non_ident_bytes};

/// `'...'` or `"..."` opened at `open`; a doubled quote stays inside.
#[inline(always)]
pub(crate) fn quoted_end(src: &[u8], open: usize, quote: u8) -> usize {
    let mut from = open + 1;
    loop {
        match find_byte(src, from, quote) {
            None => return src.len(),
            Some(close) if src.get(close + 1) == Some(&quote) => from = close + 2,
            Some(close) => return close + 1,
        }
    }
}

/// `E'...'` with the quote at `open`: a backslash escapes the next byte.
pub(crate) fn escape_string_end(src: &[u8], open: usize) -> usize {
    let mut at = open + 1;
    while let Some(n) = memchr2(b'\\', b'\'', src.get(at..).unwrap_or_default()) {
        at += n;
        // A backslash skips the next byte; a doubled quote stays inside.
        if src[at] != b'\\' && src.get(at + 1) != Some(&b'\'') {
            return at + 1;
        }
        at += 2;
    }
    src.len()
}

/// `$tag$...$tag$` (tag may be empty) opened at `open`, or None if that `$` opens none.
pub(crate) fn dollar_quote_end(src: &[u8], open: usize) -> Option<usize> {
    let mut at = open + 1;
    if src.get(at).is_some_and(|&b| has(b, IDENT_START)) {
        while src.get(at).is_some_and(|&b| has(b, IDENT_CHAR) && b != b'$') {
            at += 1;
        }
    }
    if src.get(at) != Some(&b'$') {
        return None;
    }
    let tag = &src[open..=at];
    let body = at + 1;
    Some(match memmem::find(&src[body..], tag) {
        Some(n) => body + n + tag.len(),
        None => src.len(),
    })
}

/// `$1`-style parameter at `open` (a digit follows the `$`).
pub(crate) fn param_end(src: &[u8], open: usize) -> usize {
    let mut at = open + 1;
    while src.get(at).is_some_and(u8::is_ascii_digit) {
        at += 1;
    }
    at
}

/// A number starting at `start` (a digit, or a `.` before one): alphanumerics,
/// `_`, one `.` (not `..`), and a sign right after an `e`.
pub(crate) fn number_end(src: &[u8], start: usize) -> usize {
    let mut at = start;
    let mut seen_dot = false;
    while let Some(&b) = src.get(at) {
        if has(b, NUMBER_CHAR) {
            if b | 0x20 == b'e' && matches!(src.get(at + 1), Some(b'+' | b'-')) {
                at += 1;
            }
            at += 1;
        } else if b == b'.' && !seen_dot && src.get(at + 1) != Some(&b'.') {
            seen_dot = true;
            at += 1;
        } else {
            break;
        }
    }
    at
}

/// `-- ...` through its newline.
pub(crate) fn line_comment_end(src: &[u8], start: usize) -> usize {
    match memchr(b'\n', &src[start..]) {
        Some(n) => start + n + 1,
        None => src.len(),
    }
}

/// A block comment opened at `start` (they nest in PostgreSQL, unlike C):
/// returns its end and the end of its body (before the closing `*/`).
pub(crate) fn block_comment_end(src: &[u8], start: usize) -> (usize, usize) {
    let mut at = start + 2;
    let mut depth = 1usize;
    // Only a `/` or a `*` can open or close a comment.
    while let Some(n) = memchr2(b'*', b'/', &src[at..]) {
        at += n;
        match (src[at], src.get(at + 1)) {
            (b'/', Some(b'*')) => {
                depth += 1;
                at += 2;
            }
            (b'*', Some(b'/')) => {
                depth -= 1;
                at += 2;
                if depth == 0 {
                    return (at, at - 2);
                }
            }
            _ => at += 1,
        }
    }
    (src.len(), src.len())
}

/// End of the word at `start`, 8 bytes at a time (for words the window does not hold whole).
#[cold]
#[inline(never)]
pub(crate) fn word_end(src: &[u8], start: usize) -> usize {
    let mut at = start;
    while at < src.len() {
        // Past the end the zero padding stops the word.
        let stops = non_ident_bytes(load_at(src, at));
        if stops != 0 {
            return at + (stops.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    at
}

/// What a one-letter word followed by a quote or `&` really is.
pub(crate) enum Prefixed {
    /// `E'..'`, `B'..'`, `X'..'`, `N'..'` or `U&'..'`, ending at the offset.
    Literal(usize),
    /// `U&".."`, ending at the offset.
    QuotedIdent(usize),
    Word,
}

#[cold]
#[inline(never)]
pub(crate) fn prefixed(src: &[u8], start: usize) -> Prefixed {
    match (src[start] | 0x20, src.get(start + 1).copied()) {
        (b'e', Some(b'\'')) => Prefixed::Literal(escape_string_end(src, start + 1)),
        (b'b' | b'x' | b'n', Some(b'\'')) => Prefixed::Literal(quoted_end(src, start + 1, b'\'')),
        (b'u', Some(b'&')) => match src.get(start + 2).copied() {
            Some(b'\'') => Prefixed::Literal(quoted_end(src, start + 2, b'\'')),
            Some(b'"') => Prefixed::QuotedIdent(quoted_end(src, start + 2, b'"')),
            _ => Prefixed::Word,
        },
        _ => Prefixed::Word,
    }
}

/// A number at `start` (a digit): plain digits by an 8-byte word, anything else by the full rules.
#[inline(always)]
pub(crate) fn number_at(src: &[u8], start: usize) -> usize {
    let stops = non_digit_bytes(load_at(src, start));
    let end = start + if stops == 0 { 8 } else { (stops.trailing_zeros() / 8) as usize };
    // Digits end the number unless a letter, `_` or `.` continues it.
    match src.get(end) {
        Some(&b) if has(b, NUMBER_CHAR) || b == b'.' => number_end(src, start),
        _ => end,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends() {
        assert_eq!(quoted_end(b"'a''b' x", 0, b'\''), 6);
        assert_eq!(quoted_end(b"'abc", 0, b'\''), 4);
        assert_eq!(escape_string_end(b"E'a\\'b' x", 1), 7);
        assert_eq!(escape_string_end(b"E'a\\", 1), 4);
        assert_eq!(dollar_quote_end(b"$q$ $$ $q$ x", 0), Some(10));
        assert_eq!(dollar_quote_end(b"$1", 0), None);
        assert_eq!(dollar_quote_end(b"$a", 0), None);
        assert_eq!(number_end(b"1.5e-3+1", 0), 6);
        assert_eq!(number_end(b"1..2", 0), 1);
        assert_eq!(block_comment_end(b"/* a /* b */ c */x", 0), (17, 15));
        assert_eq!(block_comment_end(b"/*/", 0), (3, 3));
        assert_eq!(line_comment_end(b"-- a\nb", 0), 5);
    }
}
