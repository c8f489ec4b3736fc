//! Per-session routing choices: where a unit of work should run, the session's `pgcausal.*`
//! settings (answered by the proxy itself), and which server errors make a read safe to re-run.

use crate::consistency::{parse_token, Floor, Level};
use crate::protocol::messages;
use crate::route::{Classification, SessionEffect, Target, TxControl};
use bytes::{BufMut, Bytes, BytesMut};

/// The kind of node a unit of work needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    Leader,
    Follower,
}

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

/// Where a statement with this classification runs, given the session's override.
/// `in_deferred_begin`: a plain BEGIN is waiting for its first statement to pick the node.
pub fn want(c: &Classification, route: RouteOverride, in_deferred_begin: bool) -> Want {
    let hard_leader = c.target == Target::Leader && !c.reason.is_soft();
    match route {
        RouteOverride::Leader => return Want::Leader,
        RouteOverride::Follower if !hard_leader => return Want::Follower,
        _ => {}
    }
    if in_deferred_begin {
        return if c.tx == TxControl::SetTransactionReadOnly { Want::Follower } else { Want::Leader };
    }
    match (c.tx, c.target) {
        (TxControl::Begin { read_only }, _) => {
            if read_only {
                Want::Follower
            } else {
                Want::Leader
            }
        }
        (_, Target::Follower) => Want::Follower,
        (_, Target::Leader) => Want::Leader,
    }
}

/// Server errors after which a read that sent nothing to the client yet can run again elsewhere:
/// `Some(true)` means "on the leader" (the follower refused a write), `Some(false)` "on another node".
pub fn retry_on(sqlstate: &[u8; 5]) -> Option<bool> {
    match sqlstate {
        b"25006" => Some(true),                                   // read_only_sql_transaction
        b"57P01" | b"57P02" | b"57P03" | b"40001" => Some(false), // shutdown, conflict with recovery
        [b'0', b'8', ..] => Some(false),                          // connection exception
        _ => None,
    }
}

/// The proxy's own session settings.
#[derive(Debug, Default)]
pub struct ProxySettings {
    pub route: RouteOverride,
}

type CommandError = (&'static str, String);

fn invalid(name: &str, value: &str, expected: &str) -> CommandError {
    ("22023", format!("invalid value for parameter \"{name}\": \"{value}\" ({expected})"))
}

/// `SET pgcausal.<name> = value` (also from startup options and RESET with `None`).
pub fn apply_setting(
    name: &str,
    value: Option<&str>,
    settings: &mut ProxySettings,
    floor: &mut Floor,
) -> Result<(), CommandError> {
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
        _ => return Err(("42704", format!("unrecognized configuration parameter \"{name}\""))),
    }
    Ok(())
}

/// The value `SHOW pgcausal.<name>` answers; `token` is the session's settled causal token.
fn show(name: &str, settings: &ProxySettings, floor: &Floor, token: Option<&str>) -> Result<String, CommandError> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "pgcausal.route" => settings.route.name().to_string(),
        "pgcausal.consistency" => floor.level.name().to_string(),
        "pgcausal.max_staleness" => {
            floor.max_staleness.map_or("off".into(), |d| humantime::format_duration(d).to_string())
        }
        "pgcausal.lsn" | "pgcausal.min_lsn" => token.unwrap_or_default().to_string(),
        _ => return Err(("42704", format!("unrecognized configuration parameter \"{name}\""))),
    })
}

/// True if answering `c` needs the session's settled causal token first.
pub fn needs_token(c: &Classification) -> bool {
    c.session.iter().any(|e| matches!(e, SessionEffect::ProxyShow { name } if name.eq_ignore_ascii_case("pgcausal.lsn") || name.eq_ignore_ascii_case("pgcausal.min_lsn")))
}

/// The reply to `pgcausal.*` commands, or an error (SQLSTATE, message). A simple Query's answer
/// has a RowDescription before a SHOW's row; an Execute's has not (its Describe gave it).
pub fn answer_proxy_command(
    c: &Classification,
    settings: &mut ProxySettings,
    floor: &mut Floor,
    token: Option<&str>,
    row_description: bool,
) -> Result<BytesMut, CommandError> {
    let mut out = BytesMut::new();
    for effect in &c.session {
        match effect {
            SessionEffect::ProxySet { name, value } => {
                apply_setting(name, Some(value), settings, floor)?;
                put_command_complete(&mut out, "SET");
            }
            SessionEffect::ProxyReset { name } => {
                apply_setting(name, None, settings, floor)?;
                put_command_complete(&mut out, "RESET");
            }
            SessionEffect::ProxyShow { name } => {
                let value = show(name, settings, floor, token)?;
                if row_description {
                    put_text_column(&mut out, &name.to_ascii_lowercase(), 0);
                }
                put_single_value(&mut out, &value);
                put_command_complete(&mut out, "SHOW");
            }
            _ => {}
        }
    }
    Ok(out)
}

pub fn put_command_complete(out: &mut BytesMut, tag: &str) {
    out.put_u8(b'C');
    out.put_i32(4 + tag.len() as i32 + 1);
    out.put_slice(tag.as_bytes());
    out.put_u8(0);
}

/// RowDescription with one `text` column in the given format (0 text, 1 binary), as SHOW has.
pub fn put_text_column(out: &mut BytesMut, column: &str, format: i16) {
    out.put_u8(b'T');
    out.put_i32(4 + 2 + column.len() as i32 + 1 + 18);
    out.put_i16(1);
    out.put_slice(column.as_bytes());
    out.put_u8(0);
    out.put_i32(0); // table oid
    out.put_i16(0); // column number
    out.put_i32(25); // text
    out.put_i16(-1);
    out.put_i32(-1);
    out.put_i16(format);
}

/// One DataRow with one value (a `text` value has the same bytes in both formats).
fn put_single_value(out: &mut BytesMut, value: &str) {
    out.put_u8(b'D');
    out.put_i32(4 + 2 + 4 + value.len() as i32);
    out.put_i16(1);
    out.put_i32(value.len() as i32);
    out.put_slice(value.as_bytes());
}

/// The answer to a standalone BEGIN whose node is chosen by the next statement, and to COMMIT or
/// ROLLBACK of such a transaction that never ran a statement.
pub fn local_transaction_reply(tag: &str, status: u8) -> Bytes {
    let mut out = BytesMut::new();
    put_command_complete(&mut out, tag);
    out.extend_from_slice(&messages::ready_for_query(status));
    out.freeze()
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
    fn wants_follow_classification_overrides_and_deferred_begin() {
        let auto = RouteOverride::Auto;
        assert_eq!(want(&c("SELECT 1"), auto, false), Want::Follower);
        assert_eq!(want(&c("INSERT INTO t VALUES (1)"), auto, false), Want::Leader);
        assert_eq!(want(&c("BEGIN READ ONLY"), auto, false), Want::Follower);
        assert_eq!(want(&c("BEGIN"), auto, false), Want::Leader);
        assert_eq!(want(&c("SET TRANSACTION READ ONLY"), auto, true), Want::Follower);
        assert_eq!(want(&c("SELECT 1"), auto, true), Want::Leader);
        assert_eq!(want(&c("SELECT 1"), RouteOverride::Leader, false), Want::Leader);
        assert_eq!(want(&c("DELETE FROM t"), RouteOverride::Follower, false), Want::Leader);
    }

    #[test]
    fn proxy_commands_set_show_and_reject() {
        let (mut s, mut f) = (ProxySettings::default(), Floor::new(Level::Causal, None));
        let mut answer = |sql: &str| answer_proxy_command(&c(sql), &mut s, &mut f, Some("1/0/10"), true);
        assert_eq!(&answer("SET pgcausal.route = leader").unwrap()[..], b"C\0\0\0\x08SET\0");
        assert!(answer("SHOW pgcausal.route").unwrap().windows(6).any(|w| w == b"leader"));
        assert_eq!(answer("SET pgcausal.route = sideways").unwrap_err().0, "22023");
        assert_eq!(answer("SHOW pgcausal.nothing").unwrap_err().0, "42704");
        answer("SET pgcausal.consistency = eventual").unwrap();
        answer("SET pgcausal.max_staleness = '250ms'").unwrap();
        assert_eq!(answer("SET pgcausal.min_lsn = 'nonsense'").unwrap_err().0, "22023");
        answer("SET pgcausal.min_lsn = '1/0/3000148'").unwrap();
        assert!(answer("SHOW pgcausal.lsn").unwrap().windows(6).any(|w| w == b"1/0/10"));
        assert_eq!(s.route, RouteOverride::Leader);
        assert_eq!((f.level, f.max_staleness, f.lsn()), (Level::Eventual, Some(Duration::from_millis(250)), 0x3000148));
        assert_eq!(retry_on(b"25006"), Some(true));
        assert_eq!(retry_on(b"08006"), Some(false));
        assert_eq!(retry_on(b"23505"), None);
    }
}
