//! The session's `pgcausal.*` settings and commands (SET/SHOW/RESET pgcausal.*), answered by
//! the proxy itself.

use crate::consistency::{parse_token, Floor, Level};
use crate::error::ProxyError;
use crate::protocol::messages::{self, ResultSet};
use crate::route::{Classification, SessionEffect};
use bytes::{Bytes, BytesMut};

/// Kept for session/*.rs, which still builds its replies from this name.
use crate::protocol::messages::put_command_complete;

/// `SET pgcausal.route = auto | leader | follower`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RouteOverride {
    #[default]
    Auto,
    Leader,
    Follower,
}

impl RouteOverride {
    fn parse(value: &str) -> Option<RouteOverride> {
        match value.trim().trim_matches('\'').to_ascii_lowercase().as_str() {
            "auto" | "default" => Some(RouteOverride::Auto),
            "leader" | "primary" => Some(RouteOverride::Leader),
            "follower" | "replica" | "standby" => Some(RouteOverride::Follower),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            RouteOverride::Auto => "auto",
            RouteOverride::Leader => "leader",
            RouteOverride::Follower => "follower",
        }
    }
}

/// The proxy's own session settings.
#[derive(Debug, Default)]
pub struct ProxySettings {
    pub route: RouteOverride,
}

fn invalid(name: &str, value: &str, expected: &'static str) -> ProxyError {
    ProxyError::InvalidParameterValue { name: name.to_string(), value: value.to_string(), expected }
}

/// `SET pgcausal.<name> = value` (also from startup options and RESET with `None`).
pub fn apply(
    name: &str,
    value: Option<&str>,
    settings: &mut ProxySettings,
    floor: &mut Floor,
) -> Result<(), ProxyError> {
    let unquoted = value.map(|v| v.trim().trim_matches('\''));
    match name.to_ascii_lowercase().as_str() {
        "pgcausal.route" => {
            settings.route = match unquoted {
                None => RouteOverride::Auto,
                Some(v) => RouteOverride::parse(v).ok_or_else(|| invalid(name, v, "auto, leader or follower"))?,
            }
        }
        "pgcausal.consistency" => {
            floor.level = match unquoted {
                None => Level::default(),
                Some(v) => Level::parse(v)
                    .ok_or_else(|| invalid(name, v, "eventual, monotonic, read_your_writes, causal or strong"))?,
            }
        }
        "pgcausal.max_staleness" => {
            floor.max_staleness = match unquoted {
                None | Some("0") | Some("off") | Some("") => None,
                Some(v) => Some(humantime::parse_duration(v).map_err(|_| invalid(name, v, "a duration like 250ms"))?),
            }
        }
        "pgcausal.min_lsn" => {
            if let Some(v) = unquoted {
                let (timeline, lsn) =
                    parse_token(v).ok_or_else(|| invalid(name, v, "a token from SHOW pgcausal.lsn"))?;
                floor.adopt(timeline, lsn);
            }
        }
        _ => return Err(ProxyError::UnknownParameter(name.to_string())),
    }
    Ok(())
}

/// The value `SHOW pgcausal.<name>` answers; `token` is the session's settled causal token.
fn show(name: &str, settings: &ProxySettings, floor: &Floor, token: Option<&str>) -> Result<String, ProxyError> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "pgcausal.route" => settings.route.name().to_string(),
        "pgcausal.consistency" => floor.level.name().to_string(),
        "pgcausal.max_staleness" => {
            floor.max_staleness.map_or("off".into(), |d| humantime::format_duration(d).to_string())
        }
        "pgcausal.lsn" | "pgcausal.min_lsn" => token.unwrap_or_default().to_string(),
        _ => return Err(ProxyError::UnknownParameter(name.to_string())),
    })
}

/// True if answering `c` needs the session's settled causal token first.
pub fn needs_token(c: &Classification) -> bool {
    c.session.iter().any(|e| matches!(e, SessionEffect::ProxyShow { name } if name.eq_ignore_ascii_case("pgcausal.lsn") || name.eq_ignore_ascii_case("pgcausal.min_lsn")))
}

/// The reply to `pgcausal.*` commands, or the error to send. A simple Query's answer has a
/// RowDescription before a SHOW's row; an Execute's has not (its Describe gave it).
pub fn answer(
    c: &Classification,
    settings: &mut ProxySettings,
    floor: &mut Floor,
    token: Option<&str>,
    row_description: bool,
) -> Result<BytesMut, ProxyError> {
    let mut out = BytesMut::new();
    for effect in &c.session {
        match effect {
            SessionEffect::ProxySet { name, value } => {
                apply(name, Some(value), settings, floor)?;
                put_command_complete(&mut out, "SET");
            }
            SessionEffect::ProxyReset { name } => {
                apply(name, None, settings, floor)?;
                put_command_complete(&mut out, "RESET");
            }
            SessionEffect::ProxyShow { name } => {
                let value = show(name, settings, floor, token)?;
                let mut shown = ResultSet::new(&[&name.to_ascii_lowercase()]);
                shown.row(&[Some(&value)]);
                if row_description {
                    shown.write(&mut out, "SHOW");
                } else {
                    shown.put_rows(&mut out);
                    put_command_complete(&mut out, "SHOW");
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The answer to a standalone BEGIN whose node is chosen by the next statement, and to COMMIT or
/// ROLLBACK of such a transaction that never ran a statement.
pub fn local_transaction_reply(tag: &str, status: crate::protocol::TxStatus) -> Bytes {
    messages::command_complete_and_ready(tag, status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::{classify, FunctionCatalog};
    use std::time::Duration;

    fn c(sql: &str) -> Classification {
        classify(sql, &FunctionCatalog::builtin())
    }

    #[test]
    fn proxy_commands_set_show_and_reject() {
        let (mut s, mut f) = (ProxySettings::default(), Floor::new(Level::Causal, None));
        let mut answer = |sql: &str| answer(&c(sql), &mut s, &mut f, Some("1/0/10"), true);
        assert_eq!(&answer("SET pgcausal.route = leader").unwrap()[..], b"C\0\0\0\x08SET\0");
        assert!(answer("SHOW pgcausal.route").unwrap().windows(6).any(|w| w == b"leader"));
        assert_eq!(answer("SET pgcausal.route = sideways").unwrap_err().sqlstate(), "22023");
        assert_eq!(answer("SHOW pgcausal.nothing").unwrap_err().sqlstate(), "42704");
        answer("SET pgcausal.consistency = eventual").unwrap();
        answer("SET pgcausal.max_staleness = '250ms'").unwrap();
        assert_eq!(answer("SET pgcausal.min_lsn = 'nonsense'").unwrap_err().sqlstate(), "22023");
        answer("SET pgcausal.min_lsn = '1/0/3000148'").unwrap();
        assert!(answer("SHOW pgcausal.lsn").unwrap().windows(6).any(|w| w == b"1/0/10"));
        assert_eq!(s.route, RouteOverride::Leader);
        assert_eq!((f.level, f.max_staleness, f.lsn()), (Level::Eventual, Some(Duration::from_millis(250)), 0x3000148));
    }

    #[test]
    fn show_answers_one_text_column() {
        let (mut s, mut f) = (ProxySettings { route: RouteOverride::Leader }, Floor::new(Level::Causal, None));
        let mut answer = |sql: &str, simple| answer(&c(sql), &mut s, &mut f, None, simple).unwrap();
        let description = b"T\0\0\0\x27\0\x01pgcausal.route\0\0\0\0\0\0\0\0\0\0\x19\xff\xff\xff\xff\xff\xff\0\0";
        let rest = b"D\0\0\0\x10\0\x01\0\0\0\x06leaderC\0\0\0\x09SHOW\0";
        assert_eq!(&answer("SHOW pgcausal.route", true)[..], [&description[..], rest].concat());
        assert_eq!(&answer("SHOW pgcausal.route", false)[..], rest);
    }
}
