//! SHOW CLIENTS: each connected client with its address, user, database, state, node,
//! consistency level, causal token (as of its last unit), connection time and units run.

use super::{unix_time, Table};
use crate::consistency::{format_token, Level};
use crate::frontend::shared::Shared;

pub fn show_clients(shared: &Shared) -> Table {
    let mut table = Table::new(&[
        "id",
        "address",
        "user",
        "database",
        "state",
        "node",
        "consistency",
        "token",
        "connected_since",
        "units",
    ]);
    for client in shared.clients.list() {
        let (level, timeline, lsn) = client.floor();
        table.row(vec![
            Some(client.id.to_string()),
            Some(client.peer.to_string()),
            Some(client.user.clone()),
            Some(client.database.clone()),
            Some(client.status().name().to_string()),
            client.node().map(|n| shared.pools.nodes[n].name.clone()),
            Some(Level::from_index(level).name().to_string()),
            Some(format_token(timeline, lsn)),
            Some(unix_time(client.connected)),
            Some(client.units().to_string()),
        ]);
    }
    table
}
