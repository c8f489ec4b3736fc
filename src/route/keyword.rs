//! The first keyword of a SQL string, matched as one integer from its packed lowercase bytes.

use crate::route::fingerprint_hash::{ascii_lowercase, load_partial};

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

        /// Each keyword packed like [`pack_word`] does, for one integer match.
        #[allow(non_upper_case_globals)]
        mod packed {
            $(pub(super) const $variant: u128 = super::pack_word($text);)*
        }

        impl Keyword {
            /// The keyword `word` spells in any case, or [`Keyword::Other`].
            pub(crate) fn from_word(word: &[u8]) -> Keyword {
                // The longest keyword has 10 bytes.
                if word.is_empty() || word.len() > 16 {
                    return Keyword::Other;
                }
                let low = load_partial(&word[..word.len().min(8)]);
                let high = if word.len() > 8 { load_partial(&word[8..]) } else { 0 };
                Keyword::from_packed((ascii_lowercase(high) as u128) << 64 | ascii_lowercase(low) as u128)
            }

            /// The keyword a word spells, given as [`pack_word`] packs it (lowercased).
            /// An identifier byte is never zero, so the zero padding tells lengths apart.
            pub(crate) fn from_packed(packed: u128) -> Keyword {
                match packed {
                    $(packed::$variant => Keyword::$variant,)*
                    _ => Keyword::Other,
                }
            }
        }
    };
}

/// Up to 16 bytes of a lowercase word, zero-padded, little-endian.
const fn pack_word(word: &[u8]) -> u128 {
    let mut packed = 0u128;
    let mut i = 0;
    while i < word.len() && i < 16 {
        packed |= (word[i] as u128) << (8 * i);
        i += 1;
    }
    packed
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
