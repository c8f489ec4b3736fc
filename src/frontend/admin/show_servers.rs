//! SHOW SERVERS: each server connection with its node, database, user, state (idle in its
//! pool, or active for a client), that client, its server process id and its age.

use super::Table;
use crate::frontend::shared::Shared;

pub fn show_servers(shared: &Shared) -> Table {
    let mut table = Table::new(&["node", "database", "user", "state", "client", "pid", "age_seconds"]);
    let mut rows = Vec::new();
    for client in shared.clients.list() {
        let (Some(node), Some((pid, age))) = (client.node(), client.server()) else { continue };
        rows.push(vec![
            Some(shared.pools.nodes[node].name.clone()),
            Some(client.database.clone()),
            Some(client.user.clone()),
            Some("active".to_string()),
            Some(client.id.to_string()),
            Some(pid.to_string()),
            Some(format!("{:.0}", age.as_secs_f64())),
        ]);
    }
    for node in shared.pools.iter() {
        for pool in node.all() {
            let (database, user) = pool.database_and_user();
            for (pid, age) in pool.idle_connections() {
                rows.push(vec![
                    Some(node.name.clone()),
                    Some(database.to_string()),
                    Some(user.to_string()),
                    Some("idle".to_string()),
                    None,
                    Some(pid.to_string()),
                    Some(format!("{:.0}", age.as_secs_f64())),
                ]);
            }
        }
    }
    rows.sort();
    for row in rows {
        table.row(row);
    }
    table
}
