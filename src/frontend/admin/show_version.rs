//! SHOW VERSION and SHOW HELP.

use super::command::HELP;
use super::Table;

pub fn show_version() -> Table {
    let mut table = Table::new(&["version"]);
    table.row(vec![Some(format!("pgcausal {}", env!("CARGO_PKG_VERSION")))]);
    table
}

pub fn show_help() -> Table {
    let mut table = Table::new(&["command", "does"]);
    for (command, does) in HELP {
        table.row(vec![Some(command.to_string()), Some(does.to_string())]);
    }
    table
}
