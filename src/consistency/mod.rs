//! Session consistency: per-session LSN floors over every node's known WAL position, so a session
//! reads its own writes, never goes back in time, and sees a consistent prefix of history.

pub mod acks;
pub mod floor;
pub mod positions;

pub use floor::{Fallback, Floor, ReadPlan, ReadPolicy};
pub use positions::{mark, Positions, Sample};

use serde::{Deserialize, Serialize};

/// What a session is promised (`SET pgcausal.consistency = ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Any follower in rotation (optionally bounded by `pgcausal.max_staleness`).
    Eventual,
    /// Never read older data than already read.
    Monotonic,
    /// Always read one's own committed writes.
    ReadYourWrites,
    /// Both, plus consistent prefix: the default.
    #[default]
    Causal,
    /// Leader only.
    Strong,
}

impl Level {
    /// Every level, in the order of their discriminants.
    pub const ALL: [Level; 5] =
        [Level::Eventual, Level::Monotonic, Level::ReadYourWrites, Level::Causal, Level::Strong];

    /// The level whose discriminant is `index` (the default for an unknown one).
    pub fn from_index(index: u8) -> Level {
        Level::ALL.get(usize::from(index)).copied().unwrap_or_default()
    }

    pub fn parse(s: &str) -> Option<Level> {
        match s.trim().trim_matches('\'').to_ascii_lowercase().as_str() {
            "eventual" => Some(Level::Eventual),
            "monotonic" | "monotonic_reads" => Some(Level::Monotonic),
            "read_your_writes" => Some(Level::ReadYourWrites),
            "causal" => Some(Level::Causal),
            "strong" | "linearizable" => Some(Level::Strong),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Level::Eventual => "eventual",
            Level::Monotonic => "monotonic",
            Level::ReadYourWrites => "read_your_writes",
            Level::Causal => "causal",
            Level::Strong => "strong",
        }
    }

    /// Reads must see the session's own writes.
    pub fn read_your_writes(self) -> bool {
        matches!(self, Level::ReadYourWrites | Level::Causal)
    }

    /// Reads must not go back in time.
    pub fn monotonic(self) -> bool {
        matches!(self, Level::Monotonic | Level::Causal)
    }
}

/// Formats an LSN as PostgreSQL does (`0/3000148`).
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// The session's causal token: `timeline/hi/lo`, e.g. `2/0/3000148`.
pub fn format_token(timeline: u32, lsn: u64) -> String {
    format!("{timeline}/{}", format_lsn(lsn))
}

/// Parses a token from `format_token`, or a bare LSN (`0/3000148`, timeline unknown = 0).
pub fn parse_token(s: &str) -> Option<(u32, u64)> {
    let parts: Vec<&str> = s.trim().trim_matches('\'').split('/').collect();
    let lsn = |hi: &str, lo: &str| Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?);
    match parts.as_slice() {
        [hi, lo] => Some((0, lsn(hi, lo)?)),
        [tl, hi, lo] => Some((tl.parse().ok()?, lsn(hi, lo)?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        assert_eq!(format_token(2, 0x3000148), "2/0/3000148");
        assert_eq!(parse_token("2/0/3000148"), Some((2, 0x3000148)));
        assert_eq!(parse_token("'1/A/FF'"), Some((1, (0xA << 32) | 0xFF)));
        assert_eq!(parse_token("0/3000148"), Some((0, 0x3000148)));
        assert_eq!(parse_token("x/y"), None);
        assert_eq!(parse_token("1/2/3/4"), None);
        assert_eq!(Level::parse("READ_YOUR_WRITES"), Some(Level::ReadYourWrites));
        assert!(Level::Causal.monotonic() && Level::Causal.read_your_writes());
        assert!(!Level::Monotonic.read_your_writes() && !Level::ReadYourWrites.monotonic());
    }
}
