//! Per-session routing choices: where a unit of work should run, the session's `pgcausal.*`
//! settings (answered by the proxy itself), and which server errors make a read safe to re-run.

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

/// The reply to a `pgcausal.*` command, or an error (SQLSTATE, message).
pub fn answer_proxy_command(
    c: &Classification,
    settings: &mut ProxySettings,
) -> Result<BytesMut, (&'static str, String)> {
    let mut out = BytesMut::new();
    for effect in &c.session {
        match effect {
            SessionEffect::ProxySet { name, value } => {
                check_name(name)?;
                settings.route = RouteOverride::parse(value).ok_or_else(|| {
                    ("22023", format!("invalid value for parameter \"{name}\": \"{value}\" (auto, leader or follower)"))
                })?;
                put_command_complete(&mut out, "SET");
            }
            SessionEffect::ProxyReset { name } => {
                check_name(name)?;
                settings.route = RouteOverride::Auto;
                put_command_complete(&mut out, "RESET");
            }
            SessionEffect::ProxyShow { name } => {
                check_name(name)?;
                put_single_value(&mut out, name, settings.route.name());
                put_command_complete(&mut out, "SHOW");
            }
            _ => {}
        }
    }
    Ok(out)
}

fn check_name(name: &str) -> Result<(), (&'static str, String)> {
    match name.to_ascii_lowercase().as_str() {
        "pgcausal.route" => Ok(()),
        _ => Err(("42704", format!("unrecognized configuration parameter \"{name}\""))),
    }
}

pub fn put_command_complete(out: &mut BytesMut, tag: &str) {
    out.put_u8(b'C');
    out.put_i32(4 + tag.len() as i32 + 1);
    out.put_slice(tag.as_bytes());
    out.put_u8(0);
}

/// RowDescription with one text column, and one DataRow, as SHOW answers.
fn put_single_value(out: &mut BytesMut, column: &str, value: &str) {
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
    out.put_i16(0); // text format
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
        let mut s = ProxySettings::default();
        let reply = answer_proxy_command(&c("SET pgcausal.route = leader"), &mut s).unwrap();
        assert_eq!(&reply[..], b"C\0\0\0\x08SET\0");
        assert_eq!(s.route, RouteOverride::Leader);
        let reply = answer_proxy_command(&c("SHOW pgcausal.route"), &mut s).unwrap();
        assert!(reply.windows(6).any(|w| w == b"leader"));
        assert_eq!(answer_proxy_command(&c("SET pgcausal.route = sideways"), &mut s).unwrap_err().0, "22023");
        assert_eq!(answer_proxy_command(&c("SHOW pgcausal.nothing"), &mut s).unwrap_err().0, "42704");
        assert_eq!(retry_on(b"25006"), Some(true));
        assert_eq!(retry_on(b"08006"), Some(false));
        assert_eq!(retry_on(b"23505"), None);
    }
}
