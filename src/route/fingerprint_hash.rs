//! The fingerprint's token hasher: tagged tokens, multiply-rotate mixing, 8 bytes at a time.

// Per-token tags, so that e.g. a word and a quoted identifier never hash alike.
pub(crate) const TAG_WORD: u64 = 1;
pub(crate) const TAG_QUOTED: u64 = 2;
pub(crate) const TAG_LITERAL: u64 = 3;
pub(crate) const TAG_PARAM: u64 = 4;
pub(crate) const TAG_PUNCT: u64 = 5;
pub(crate) const TAG_OPERATOR: u64 = 6;
pub(crate) const TAG_SEMICOLON: u64 = 7;
pub(crate) const TAG_HINT_LEADER: u64 = 8;
pub(crate) const TAG_HINT_FOLLOWER: u64 = 9;
/// Flag on a tag for tokens of 8 bytes or more (tags must stay below 16).
const LONG: u64 = 16;

/// The header of a 1..=7 byte token: OR the zero-padded bytes in and mix it.
#[inline(always)]
pub(crate) const fn short_header(tag: u64, len: usize) -> u64 {
    (tag << 59) | ((len as u64) << 56)
}

/// The header of a token of 8 bytes or more, mixed before its 8-byte words.
#[inline(always)]
pub(crate) const fn long_header(tag: u64, len: usize) -> u64 {
    ((tag | LONG) << 59) | len as u64
}

/// FxHash-style multiply-rotate mixing, 8 bytes at a time, finished with the
/// murmur3 finalizer so every output bit depends on every input bit.
pub(crate) struct Hasher {
    state: u64,
}

const LANES: u64 = 0x0101_0101_0101_0101;
const HIGH_BITS: u64 = LANES * 0x80;

/// ASCII-lowercases 8 bytes at once (bytes >= 0x80 are left alone).
#[inline(always)]
pub(crate) fn ascii_lowercase(word: u64) -> u64 {
    let heptets = word & (LANES * 0x7f);
    let at_least_a = heptets + LANES * (0x80 - b'A' as u64);
    let above_z = heptets + LANES * (0x7f - b'Z' as u64);
    let upper = at_least_a & !above_z & !word & HIGH_BITS;
    word | (upper >> 2)
}

/// Loads 1..=7 bytes as a zero-padded little-endian word with a few
/// overlapping loads: a `memcpy` into a stack buffer costs a libc call and a
/// store-forwarding stall per token.
#[inline(always)]
pub(crate) fn load_partial(bytes: &[u8]) -> u64 {
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

    pub(crate) fn new() -> Self {
        Hasher { state: Self::SEED }
    }

    #[inline(always)]
    pub(crate) fn mix(&mut self, word: u64) {
        self.state = (self.state.rotate_left(5) ^ word).wrapping_mul(Self::K);
    }

    /// Hashes a whole token. Short ones (up to 7 bytes: most words, all
    /// punctuation) take a single mix: bytes in the low 56 bits, tag and length
    /// in the top byte. Longer ones mix a header, then 8-byte words, the last
    /// zero-padded. Bytes are optionally ASCII-lowercased.
    #[inline(always)]
    pub(crate) fn token(&mut self, tag: u64, bytes: &[u8], lowercase: bool) {
        let fold = |w: u64| if lowercase { ascii_lowercase(w) } else { w };
        let n = bytes.len();
        if n == 0 {
            self.mix(tag << 59);
        } else if n < 8 {
            self.mix(fold(load_partial(bytes)) | short_header(tag, n));
        } else {
            self.mix(long_header(tag, n));
            self.words(bytes, lowercase);
        }
    }

    /// Mixes `bytes` as 8-byte words, the last zero-padded, optionally ASCII-lowercased.
    #[inline(always)]
    pub(crate) fn words(&mut self, bytes: &[u8], lowercase: bool) {
        let fold = |w: u64| if lowercase { ascii_lowercase(w) } else { w };
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.mix(fold(u64::from_le_bytes(chunk.try_into().expect("8 bytes"))));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            self.mix(fold(load_partial(rest)));
        }
    }

    pub(crate) fn finish(self) -> u64 {
        let mut h = self.state;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
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
}
