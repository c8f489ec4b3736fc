//! Byte classes many bytes at a time for the fingerprint's scanner: 64-byte windows of identifier bits and lowercased bytes (SSE2 on x86_64, SWAR elsewhere), digits and quotes 8 at once.

use crate::route::fingerprint_hash::{ascii_lowercase, load_partial};

const LANES: u64 = 0x0101_0101_0101_0101;
const HIGH_BITS: u64 = LANES * 0x80;

/// The 8 bytes at `at`, zero-padded past the end (`at` must be below `src.len()`).
#[inline(always)]
pub(crate) fn load_at(src: &[u8], at: usize) -> u64 {
    match src.get(at..at + 8) {
        Some(chunk) => u64::from_le_bytes(chunk.try_into().expect("8 bytes")),
        None => load_partial(&src[at..]),
    }
}

/// The 16 bytes at `at` as two little-endian words, zero-padded past the end
/// (`at` must be below `src.len()`). A zero byte ends a word, as the end of input does.
#[inline(always)]
pub(crate) fn load16(src: &[u8], at: usize) -> [u64; 2] {
    let rest = &src[at..];
    match rest.first_chunk::<16>() {
        Some(chunk) => [
            u64::from_le_bytes(chunk[..8].try_into().expect("8 bytes")),
            u64::from_le_bytes(chunk[8..].try_into().expect("8 bytes")),
        ],
        None => [load_partial(&rest[..rest.len().min(8)]), rest.get(8..).map_or(0, padded)],
    }
}

/// Up to 8 bytes, zero-padded (none gives 0).
#[inline(always)]
fn padded(bytes: &[u8]) -> u64 {
    if bytes.is_empty() {
        0
    } else {
        load_partial(bytes)
    }
}

/// 64 bytes of the source classified at once (about 2 instructions a byte), so
/// that the end of each word in it is a shift and a trailing-zero count.
pub(crate) struct Window {
    /// Offset in the source of the window's first byte.
    pub base: usize,
    /// Bit i: byte `base + i` can continue an unquoted identifier (letters,
    /// digits, `_`, `$`, non-ASCII). Never set past the end of input.
    pub ident: u64,
}

/// A window's bytes ASCII-lowercased, zero past the end of input, plus room for
/// an 8-byte load at any offset. Kept apart from [`Window`] so it is written in
/// place rather than moved.
pub(crate) type Lowered = [u8; 80];

impl Window {
    pub const LEN: usize = 64;

    /// Classifies the window at `base` (below `src.len()`) and writes its lowered bytes.
    #[inline(always)]
    pub fn load(src: &[u8], base: usize, lowered: &mut Lowered) -> Window {
        let mut window = Window { base, ident: 0 };
        *lowered = [0; 80];
        for part in 0..4 {
            let at = base + 16 * part;
            if at >= src.len() {
                break;
            }
            let chunk = classify16(load16(src, at));
            window.ident |= (chunk.ident as u64) << (16 * part);
            lowered[16 * part..16 * part + 8].copy_from_slice(&chunk.lowered[0].to_le_bytes());
            lowered[16 * part + 8..16 * part + 16].copy_from_slice(&chunk.lowered[1].to_le_bytes());
        }
        window
    }
}

/// The 8 lowered bytes at offset `at` (at most 72).
#[inline(always)]
pub(crate) fn lowered_at(lowered: &Lowered, at: usize) -> u64 {
    u64::from_le_bytes(lowered[at..at + 8].try_into().expect("8 bytes"))
}

/// 16 bytes classified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Chunk {
    /// Bit i: byte i can continue an unquoted identifier.
    pub ident: u32,
    /// The bytes, ASCII-lowercased.
    pub lowered: [u64; 2],
}

/// Classifies 16 bytes with SSE2 (always present on x86_64).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn classify16(bytes: [u64; 2]) -> Chunk {
    use std::arch::x86_64::*;
    // SAFETY: SSE2 is part of the x86_64 baseline, and these intrinsics only
    // compute on registers (no memory access).
    unsafe {
        let v = _mm_set_epi64x(bytes[1] as i64, bytes[0] as i64);
        let splat = |b: u8| _mm_set1_epi8(b as i8);
        // `lo <= x <= hi` as one signed compare: shift the range to start at -128.
        // Non-ASCII bytes are negative and fall in no ASCII range.
        let within = |x, lo: u8, hi: u8| {
            _mm_cmplt_epi8(_mm_add_epi8(x, splat(0x80u8.wrapping_sub(lo))), splat(0x80u8.wrapping_add(hi - lo + 1)))
        };
        let letter = within(_mm_or_si128(v, splat(0x20)), b'a', b'z');
        let digit = within(v, b'0', b'9');
        let marks = _mm_or_si128(_mm_cmpeq_epi8(v, splat(b'_')), _mm_cmpeq_epi8(v, splat(b'$')));
        // OR-ing `v` in marks non-ASCII bytes through their own high bit.
        let ident = _mm_or_si128(_mm_or_si128(letter, digit), _mm_or_si128(marks, v));
        let lowered = _mm_or_si128(v, _mm_and_si128(letter, splat(0x20)));
        let low = _mm_cvtsi128_si64(lowered) as u64;
        let high = _mm_cvtsi128_si64(_mm_unpackhi_epi64(lowered, lowered)) as u64;
        Chunk { ident: _mm_movemask_epi8(ident) as u32, lowered: [low, high] }
    }
}

/// Classifies 16 bytes 8 at a time in plain integer registers.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
#[inline(always)]
pub(crate) fn classify16_swar(bytes: [u64; 2]) -> Chunk {
    let ident = |w: u64| gather(!non_ident_bytes(w) & HIGH_BITS);
    Chunk {
        ident: ident(bytes[0]) | ident(bytes[1]) << 8,
        lowered: [ascii_lowercase(bytes[0]), ascii_lowercase(bytes[1])],
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) use classify16_swar as classify16;

/// Packs the high bit of each byte into an 8-bit mask (bit i from byte i).
#[inline(always)]
fn gather(high_bits: u64) -> u32 {
    // Each byte's bit lands on a distinct bit of the top byte, so no sum carries.
    ((high_bits >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56) as u32
}

/// 0x80 in every byte of `word` that cannot continue an unquoted identifier.
/// No byte sum below carries into the next byte.
#[inline(always)]
pub(crate) fn non_ident_bytes(word: u64) -> u64 {
    let heptets = word & (LANES * 0x7f);
    let folded = heptets | (LANES * 0x20);
    let letter = (folded + LANES * (0x80 - b'a' as u64)) & !(folded + LANES * (0x7f - b'z' as u64));
    let digit = (heptets + LANES * (0x80 - b'0' as u64)) & !(heptets + LANES * (0x7f - b'9' as u64));
    // A byte below 0x80 is nonzero exactly when adding 0x7f sets its high bit.
    let not_underscore = (heptets ^ (LANES * b'_' as u64)) + LANES * 0x7f;
    let not_dollar = (heptets ^ (LANES * b'$' as u64)) + LANES * 0x7f;
    not_underscore & not_dollar & !(letter | digit | word) & HIGH_BITS
}

/// 0x80 in every byte of `word` that is not an ASCII digit.
#[inline(always)]
pub(crate) fn non_digit_bytes(word: u64) -> u64 {
    let heptets = word & (LANES * 0x7f);
    let digit = (heptets + LANES * (0x80 - b'0' as u64)) & !(heptets + LANES * (0x7f - b'9' as u64));
    !(digit & !word) & HIGH_BITS
}

/// Position of the first `needle` at or after `from`: two 8-byte words inline
/// (most literals are short), then memchr.
#[inline(always)]
pub(crate) fn find_byte(src: &[u8], from: usize, needle: u8) -> Option<usize> {
    let mut at = from;
    for _ in 0..2 {
        let Some(chunk) = src.get(at..at + 8) else { break };
        // The lowest flagged byte is exact: borrows only flag bytes above a real match.
        let x = u64::from_le_bytes(chunk.try_into().expect("8 bytes")) ^ (LANES * needle as u64);
        let found = x.wrapping_sub(LANES) & !x & HIGH_BITS;
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    memchr::memchr(needle, src.get(at..)?).map(|n| at + n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lexical::{has, IDENT_CHAR};

    /// The shared byte table's identifier class, which the SIMD and SWAR classes must match.
    fn is_ident(b: u8) -> bool {
        has(b, IDENT_CHAR)
    }

    #[test]
    fn swar_classes_match_bytes() {
        for b in 0..=255u8 {
            // Each byte alone and next to identifier bytes, so a stray carry would show.
            for word in [u64::from(b) * LANES, u64::from(b) | ((LANES & !0xff) * u64::from(b'a'))] {
                assert_eq!(non_ident_bytes(word) & 0xff != 0, !is_ident(b), "byte {b}");
                assert_eq!(non_digit_bytes(word) & 0xff != 0, !b.is_ascii_digit(), "byte {b}");
            }
            assert_eq!(non_ident_bytes(u64::from(b) * LANES), if is_ident(b) { 0 } else { HIGH_BITS }, "byte {b}");
        }
    }

    #[test]
    fn chunks_match_bytes() {
        let mut all = [0u8; 256];
        for (i, b) in all.iter_mut().enumerate() {
            *b = i as u8;
        }
        for start in 0..256 - 16 {
            let bytes = &all[start..start + 16];
            let chunk = classify16(load16(bytes, 0));
            assert_eq!(chunk, classify16_swar(load16(bytes, 0)), "bytes from {start}");
            for (i, &b) in bytes.iter().enumerate() {
                assert_eq!(chunk.ident >> i & 1 == 1, is_ident(b), "byte {b}");
                assert_eq!(chunk.lowered[i / 8].to_le_bytes()[i % 8], b.to_ascii_lowercase(), "byte {b}");
            }
        }
    }

    #[test]
    fn windows_cover_64_bytes_and_stop_at_the_end() {
        let text: Vec<u8> = (0..100u8).map(|i| if i % 7 == 0 { b' ' } else { b'A' + i % 26 }).collect();
        // A dirty buffer, as a window moved on from another leaves it.
        let mut lowered = [0xffu8; 80];
        for base in [0, 1, 20, 30, 36, 50, 84, 99] {
            let window = Window::load(&text, base, &mut lowered);
            for (i, &lower) in lowered.iter().enumerate() {
                let b = text.get(base + i).copied().filter(|_| i < 64);
                assert_eq!(lower, b.unwrap_or(0).to_ascii_lowercase(), "{base}+{i}");
                if i < 64 {
                    assert_eq!(window.ident >> i & 1 == 1, b.is_some_and(|b| b != b' '), "{base}+{i}");
                }
            }
        }
    }

    #[test]
    fn loads_zero_pad() {
        let text = b"0123456789abcdefXYZ";
        for at in 0..text.len() {
            let mut padded = [0u8; 16];
            let n = (text.len() - at).min(16);
            padded[..n].copy_from_slice(&text[at..at + n]);
            let want = [
                u64::from_le_bytes(padded[..8].try_into().unwrap()),
                u64::from_le_bytes(padded[8..].try_into().unwrap()),
            ];
            assert_eq!(load16(text, at), want, "at {at}");
            assert_eq!(load_at(text, at), want[0], "at {at}");
        }
    }

    #[test]
    fn find_byte_matches_position() {
        let text = b"abc'def''ghijklmnopqrstuvwxyz0123456789'";
        for from in 0..text.len() {
            let want = text[from..].iter().position(|&b| b == b'\'').map(|n| from + n);
            assert_eq!(find_byte(text, from, b'\''), want, "from {from}");
        }
        assert_eq!(find_byte(b"", 0, b'x'), None);
        assert_eq!(find_byte(b"abc", 3, b'x'), None);
    }
}
