//! The admin console's commands: parsing one query string into a command, and the help text.

/// What the console can show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    Nodes,
    Pools,
    Clients,
    Servers,
    Stats,
    Config,
    Version,
    Help,
    Failovers,
}

/// One console command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Show(Show),
    Reload,
    Pause,
    Resume,
    Shutdown,
    Kill(u64),
    /// PROMOTE [node] [FORCE]: the node by name (None: the election's choice).
    Promote {
        node: Option<String>,
        force: bool,
    },
    /// SWITCHOVER [TO node]: the node by name (None: the most advanced follower).
    Switchover {
        to: Option<String>,
    },
}

/// Every command with what it does, for SHOW HELP and the error an unknown command gets.
pub const HELP: &[(&str, &str)] = &[
    ("SHOW NODES", "each node: role, timeline, health, rotation, WAL position, lag, connections, units"),
    ("SHOW POOLS", "each pool (node, database, user): active, idle, waiting, longest wait, size"),
    ("SHOW CLIENTS", "each client: id, address, user, database, state, node, consistency, token, units"),
    ("SHOW SERVERS", "each server connection: node, database, user, state, client, age"),
    ("SHOW STATS", "totals and per-second rates since start"),
    ("SHOW CONFIG", "the running configuration (secrets masked)"),
    (
        "SHOW FAILOVERS",
        "each failover attempt: start, end, result, old and new leader, timelines, phase durations, lost WAL",
    ),
    ("SHOW VERSION", "pgcausal's version"),
    ("SHOW HELP", "this list"),
    ("RELOAD", "read the config file again and apply what can change live"),
    ("PAUSE", "hold new units of work; units in flight finish"),
    ("RESUME", "serve held and new units again"),
    ("SHUTDOWN", "stop accepting, let units finish, close clients, exit"),
    ("KILL <client id>", "close one client's connection (its unit in flight is rolled back)"),
    (
        "PROMOTE [node] [FORCE]",
        "once the leader is confirmed dead: promote the election's choice or this node (FORCE: even if behind)",
    ),
    (
        "SWITCHOVER [TO node]",
        "hand the leadership to this follower (or the most advanced) without losing a write; held writes wait",
    ),
];

/// Why a query is not a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("the admin console takes one command at a time")]
    Several,
    #[error("unknown command \"{0}\"; commands: {list}", list = command_list())]
    Unknown(String),
    #[error("KILL takes a client id (a number from SHOW CLIENTS), not \"{0}\"")]
    BadClientId(String),
}

fn command_list() -> String {
    HELP.iter().map(|(c, _)| *c).collect::<Vec<_>>().join(", ")
}

/// Parses one console query: words are case-insensitive, a trailing `;` and surrounding
/// whitespace are ignored. None for an empty query (answered with EmptyQueryResponse).
pub fn parse(sql: &str) -> Result<Option<Command>, CommandError> {
    let sql = sql.trim().trim_end_matches(';').trim_end();
    if sql.is_empty() {
        return Ok(None);
    }
    if sql.contains(';') {
        return Err(CommandError::Several);
    }
    let words: Vec<String> = sql.split_whitespace().map(str::to_ascii_uppercase).collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let command = match words.as_slice() {
        ["SHOW", what] => Command::Show(match *what {
            "NODES" => Show::Nodes,
            "POOLS" => Show::Pools,
            "CLIENTS" => Show::Clients,
            "SERVERS" => Show::Servers,
            "STATS" => Show::Stats,
            "CONFIG" => Show::Config,
            "VERSION" => Show::Version,
            "HELP" => Show::Help,
            "FAILOVERS" => Show::Failovers,
            _ => return Err(CommandError::Unknown(sql.to_string())),
        }),
        ["RELOAD"] => Command::Reload,
        ["PAUSE"] => Command::Pause,
        ["RESUME"] => Command::Resume,
        ["SHUTDOWN"] => Command::Shutdown,
        ["KILL", _] => {
            let id = sql.split_whitespace().nth(1).unwrap_or_default();
            Command::Kill(id.parse().map_err(|_| CommandError::BadClientId(id.to_string()))?)
        }
        ["PROMOTE", rest @ ..] if rest.len() <= 2 => {
            let original: Vec<&str> = sql.split_whitespace().skip(1).collect();
            let force = rest.last() == Some(&"FORCE");
            let named = if force { &original[..original.len() - 1] } else { &original[..] };
            match named {
                [] => Command::Promote { node: None, force },
                [node] => Command::Promote { node: Some(node.to_string()), force },
                _ => return Err(CommandError::Unknown(sql.to_string())),
            }
        }
        ["SWITCHOVER"] => Command::Switchover { to: None },
        ["SWITCHOVER", "TO", _] => Command::Switchover { to: sql.split_whitespace().nth(2).map(str::to_string) },
        _ => return Err(CommandError::Unknown(sql.to_string())),
    };
    Ok(Some(command))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_case_insensitively_with_or_without_semicolon() {
        assert_eq!(parse("show pools"), Ok(Some(Command::Show(Show::Pools))));
        assert_eq!(parse("  SHOW   Nodes ;  "), Ok(Some(Command::Show(Show::Nodes))));
        assert_eq!(parse("reload;"), Ok(Some(Command::Reload)));
        assert_eq!(parse("KILL 42"), Ok(Some(Command::Kill(42))));
        assert_eq!(parse("promote"), Ok(Some(Command::Promote { node: None, force: false })));
        assert_eq!(parse("PROMOTE Node2"), Ok(Some(Command::Promote { node: Some("Node2".into()), force: false })));
        assert_eq!(
            parse("PROMOTE node2 force"),
            Ok(Some(Command::Promote { node: Some("node2".into()), force: true }))
        );
        assert_eq!(parse("SHOW FAILOVERS"), Ok(Some(Command::Show(Show::Failovers))));
        assert_eq!(parse("switchover;"), Ok(Some(Command::Switchover { to: None })));
        assert_eq!(parse("SWITCHOVER to Node2"), Ok(Some(Command::Switchover { to: Some("Node2".into()) })));
        assert!(parse("SWITCHOVER node2").is_err(), "TO is required before a node");
        assert_eq!(parse(" ; "), Ok(None));
        assert_eq!(parse(""), Ok(None));
    }

    #[test]
    fn bad_commands_say_what_is_wrong_and_list_the_commands() {
        let unknown = parse("SHOW TABLES").unwrap_err();
        assert_eq!(unknown, CommandError::Unknown("SHOW TABLES".into()));
        let text = unknown.to_string();
        for (command, _) in HELP {
            assert!(text.contains(command), "{text} lists {command}");
        }
        assert_eq!(parse("KILL me"), Err(CommandError::BadClientId("me".into())));
        assert_eq!(parse("SHOW POOLS; SHOW NODES"), Err(CommandError::Several));
        assert_eq!(parse("SELECT 1"), Err(CommandError::Unknown("SELECT 1".into())));
    }
}
